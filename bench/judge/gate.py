"""`python -m bench gate --base REV`: fail CI on a confirmed regression against REV, in this job.

1. REV is checked out into a temporary git worktree (removed afterwards, also on failure).
2. The suite runs as 2N processes (N = 7 by default), REV and the working tree alternating (A B A B ...), each
   process `python -m bench run` with this interpreter and its cwd in the tree under test, so
   each side imports its own code. One process run gives one median per timing (bench.judge.stats).
3. bench.judge.compare judges the two sides. Exact and memory figures fail at once (no retry).
4. Timings flagged as regressed are re-run, those cases only, N more processes a side, in the
   opposite order (B A B A ..., so a drift along the job cannot favour the same side twice).
   A flag that does not repeat is reported as unconfirmed and does not fail the gate.

Skipped with a message and exit 0: not a git checkout, the first commit, a shallow clone that
lacks REV, a REV without `python -m bench` or without the suite (nothing to compare against).
A base revision that cannot run the suite is skipped the same way (say so loudly in CI logs).
Exit 1: a confirmed regression, or the working tree could not run the suite. Exit 2: bad usage.

Test-only: BENCH_GATE_PLANT="CASE_ID:METRIC:FACTOR" multiplies that case's samples of that
metric in every working-tree run by FACTOR before comparing (a planted slowdown).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.judge import compare

PLANT_VARIABLE = "BENCH_GATE_PLANT"
# 7 runs a side: Mann-Whitney still reaches p < 0.01 with up to 4 of the 49 pairs out of order
# (5 runs need all 25 in order: one unlucky run hides a 25% slowdown). Measured on the smoke suite
# on a 2-core machine: about 80 s for 5 runs a side, so 7 a side plus a confirmation fit 6 minutes.
DEFAULT_RUNS = 7


class Skip(Exception):
    """Nothing to compare against: say why, exit 0."""


class GateError(Exception):
    """Bad usage: say why, exit 2."""


class TreeFailed(Exception):
    """The working tree could not run the suite: exit 1."""


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--base", required=True, metavar="REV", help="git revision to compare against, e.g. HEAD~1")
    parser.add_argument("--suite", default="smoke", help="suite name or .toml path (default smoke)")
    parser.add_argument("--runs", type=positive_int, default=DEFAULT_RUNS,
                        help=f"process runs per side, alternating (default {DEFAULT_RUNS}; 5 is the fewest that can "
                             f"reach alpha 0.01, and only with every run of one side beyond every run of the other)")
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help="timed repeats per process (default: the suite's)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where the runs are kept (default results/runs/gate-<UTC time> in the checkout)")
    parser.add_argument("--run-timeout", type=positive_int, default=600, metavar="S",
                        help="seconds one `bench run` process may take (default 600)")
    compare.add_options(parser)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def main(args) -> int:
    previous = _exit_on_sigterm()
    try:
        return run_gate(args)
    except Skip as e:
        print(f"bench gate: skipped: {e}")
        return 0
    except GateError as e:
        print(f"bench gate: {e}", file=sys.stderr)
        return 2
    except TreeFailed as e:
        print(f"bench gate: FAIL: {e}", file=sys.stderr)
        return 1
    except compare.UnusableInput as e:
        print(f"bench gate: FAIL: the runs could not be compared: {e}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_gate(args) -> int:
    started = time.perf_counter()
    repo = git_toplevel()
    base_commit = resolve_base(repo, args.base)
    out = (args.out or repo / "results" / "runs" / time.strftime("gate-%Y%m%d-%H%M%S", time.gmtime())).resolve()
    if out.exists() and any(out.iterdir()):
        raise GateError(f"--out {out} is not empty: give a new directory")
    options = compare.options_from(args)
    with base_worktree(repo, base_commit) as base_tree:
        suite = check_suite(base_tree, repo, args.suite)
        trees = {"base": base_tree, "new": repo}
        log(f"base {args.base} = {base_commit[:12]}, new = working tree {repo}; suite {args.suite}, "
            f"{args.runs} runs a side; runs in {out}")
        run_sides(trees, out / "first", suite, args, order=("base", "new"))
        first = compare.compare_runs(compare.load_side(out / "first" / "base"),
                                     compare.load_side(out / "first" / "new"), options)
        flagged = [r for r in first.rows if r.status == "regressed" and compare.METRICS[r.metric].kind == "timing"]
        final = first
        if flagged:
            cases = sorted({r.case_id for r in flagged})
            metrics = tuple(sorted({r.metric for r in flagged}))
            log(f"first pass flagged {len(flagged)} timing(s) in {len(cases)} case(s): confirming with "
                f"{args.runs} more runs a side, new first")
            run_sides(trees, out / "confirm", suite, args, order=("new", "base"), only=cases)
            confirm_options = compare.Options(**{**vars(options), "metrics": metrics})
            confirmation = compare.compare_runs(compare.load_side(out / "confirm" / "base"),
                                                compare.load_side(out / "confirm" / "new"), confirm_options)
            final = compare.mark_unconfirmed(first, confirmation)
    confirmed = sum(r.status == "regressed" for r in final.rows if r.metric in compare.METRICS
                    and compare.METRICS[r.metric].kind == "timing")
    summary = (f"gate: first pass flagged {len(flagged)} timing(s), {confirmed} confirmed; "
               f"{time.perf_counter() - started:.0f} s in all; runs kept in {out}")
    if args.format == "json":  # stdout stays one JSON document
        report = json.loads(compare.render(final, "json"))
        report["gate"] = dict(base=args.base, base_commit=base_commit, runs=args.runs, first_pass_flagged=len(flagged),
                              confirmed=confirmed, seconds=round(time.perf_counter() - started, 1), out=str(out))
        print(json.dumps(report, indent=2))
        for path in compare.write_dashboard(final, args.dashboard_dir or out):
            log(f"wrote {path}")
        log(summary)
    else:
        print(compare.render(final, args.format))
        print(summary)
    return 1 if final.failed else 0


# ---- git ----

def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def git_toplevel() -> Path:
    try:
        result = git("rev-parse", "--show-toplevel", check=False)
    except FileNotFoundError:
        raise Skip("git is not installed") from None
    if result.returncode != 0:
        raise Skip("not inside a git checkout: nothing to compare against")
    return Path(result.stdout.strip())


def resolve_base(repo: Path, rev: str) -> str:
    result = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo, check=False)
    if result.returncode == 0:
        return result.stdout.strip()
    shallow = git("rev-parse", "--is-shallow-repository", cwd=repo, check=False).stdout.strip() == "true"
    if shallow:
        raise Skip(f"{rev} is not in this shallow clone; fetch more history (e.g. fetch-depth: 2) to gate")
    has_head = git("rev-parse", "--verify", "--quiet", "HEAD", cwd=repo, check=False).returncode == 0
    parents = git("rev-list", "--parents", "-n", "1", "HEAD", cwd=repo, check=False).stdout.split()
    if not has_head or len(parents) == 1:
        raise Skip(f"{rev} does not exist: this is the first commit, there is no earlier revision to compare with")
    raise GateError(f"unknown revision {rev!r}: give a commit, branch or tag (e.g. HEAD~1)")


@contextlib.contextmanager
def base_worktree(repo: Path, commit: str):
    """A detached worktree of `commit`, removed on the way out whatever happens."""
    holder = Path(tempfile.mkdtemp(prefix="bench-gate-"))
    tree = holder / "base"
    try:
        result = git("worktree", "add", "--detach", "--quiet", str(tree), commit, cwd=repo, check=False)
        if result.returncode != 0:
            raise GateError(f"could not check out {commit[:12]} into a worktree: {result.stderr.strip()}")
        yield tree
    finally:
        git("worktree", "remove", "--force", str(tree), cwd=repo, check=False)
        shutil.rmtree(holder, ignore_errors=True)
        git("worktree", "prune", cwd=repo, check=False)


def check_suite(base_tree: Path, repo: Path, suite: str) -> str:
    """The suite argument both trees get: a built-in name both have, or an absolute .toml path."""
    if not (base_tree / "bench" / "__main__.py").is_file():
        raise Skip("the base revision has no `python -m bench` (bench/__main__.py): nothing to compare against")
    if suite.endswith(".toml") or "/" in suite:
        path = Path(suite).resolve()
        if not path.is_file():
            raise GateError(f"suite file {suite} does not exist")
        return str(path)
    if not (repo / "bench" / "suites" / f"{suite}.toml").is_file():
        known = sorted(p.stem for p in (repo / "bench" / "suites").glob("*.toml"))
        raise GateError(f"unknown suite {suite!r}: valid suites are {', '.join(known)} or a path to a .toml file")
    if not (base_tree / "bench" / "suites" / f"{suite}.toml").is_file():
        raise Skip(f"the base revision has no suite {suite!r}: nothing to compare against")
    return suite


# ---- running ----

def run_sides(trees: dict[str, Path], out: Path, suite: str, args, order: tuple[str, str],
              only: list[str] | None = None):
    for i in range(args.runs):
        for side in order:
            run_dir = out / side / f"run-{i:02d}"
            t0 = time.perf_counter()
            try:
                run_suite(trees[side], run_dir, suite, args, only)
            except TreeFailed as e:
                if side == "base":  # not the working tree's fault: nothing trustworthy to compare with
                    raise Skip(f"the base revision could not run the suite: {e}") from None
                raise
            if side == "new":
                plant(run_dir, only)
            log(f"{out.name} run {i + 1}/{args.runs} {side}: {time.perf_counter() - t0:.1f} s")


def run_suite(tree: Path, run_dir: Path, suite: str, args, only: list[str] | None):
    command = [sys.executable, "-m", "bench", "run", "--suite", suite, "--out", str(run_dir)]
    if args.repeats:
        command += ["--repeats", str(args.repeats)]
    if only:
        command += ["--only", ",".join(only)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("PYTHONSAFEPATH", None)
    env.pop(PLANT_VARIABLE, None)
    try:
        result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True,
                                timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        raise TreeFailed(f"`{' '.join(command[1:])}` in {tree} took over {args.run_timeout} s") from None
    if not (run_dir / "results.csv").is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise TreeFailed(f"`python {' '.join(command[1:])}` in {tree} wrote no results (exit {result.returncode}):\n"
                         f"{tail}")
    check_imported_from(tree, run_dir)


def check_imported_from(tree: Path, run_dir: Path):
    """A run that imported another tree's bench would compare a tree with itself: refuse."""
    try:
        command = json.loads((run_dir / "env.json").read_text()).get("command", "")
    except (OSError, ValueError, AttributeError):
        return  # compare reports an unreadable env.json
    script = command.split()[0] if isinstance(command, str) and command else ""
    if script.endswith("__main__.py") and not Path(script).resolve().is_relative_to(tree.resolve()):
        raise GateError(f"the run for {tree} imported bench from {script}: check PYTHONPATH and installed copies")


def plant(run_dir: Path, only: list[str] | None = None):
    """Test-only planted slowdown of one case's metric (BENCH_GATE_PLANT=CASE_ID:METRIC:FACTOR)."""
    spec = os.environ.get(PLANT_VARIABLE)
    if not spec:
        return
    try:
        case_id, metric, factor_text = spec.rsplit(":", 2)
        factor = float(factor_text)
    except ValueError:
        raise GateError(f"{PLANT_VARIABLE}={spec!r}: expected CASE_ID:METRIC:FACTOR, e.g. "
                        f"yoco-gret-...:decode_ms_per_step:1.25") from None
    if only is not None and case_id not in only:
        return  # a confirmation run of other cases
    log(f"WARNING: {PLANT_VARIABLE} set: {metric} of {case_id} scaled by {factor} in {run_dir.name} (test only)")
    columns = {"samples.csv": ("value", "normalized"), "results.csv": (metric,)}
    touched = 0
    for name, scaled in columns.items():
        path = run_dir / name
        rows = list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
        for row in rows:
            if row.get("case_id") == case_id and (name == "results.csv" or row.get("metric") == metric):
                for column in scaled:
                    if row.get(column) not in (None, "", "nan"):
                        row[column] = repr(float(row[column]) * factor)
                        touched += name == "samples.csv"
        if rows:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    if not touched:
        raise GateError(f"{PLANT_VARIABLE}: no samples of {metric} for case {case_id!r} in {run_dir}")


def log(message: str):
    print(f"[gate] {message}", file=sys.stderr, flush=True)


def _exit_on_sigterm():
    """Turn SIGTERM (CI cancelling the job) into SystemExit so the worktree is still removed."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None
