"""`python -m bench gate --base REV`: fail CI on a regression against REV, measured in this job.

1. REV (any git revision) is checked out into a temporary git worktree (removed afterwards, also
   on failure).
2. The suite runs as 2N processes (N = DEFAULT_RUNS), REV and the working tree alternating
   (A B A B ...), each process `python -m bench run` with this interpreter and its cwd in the tree
   under test, so each side imports its own code. One process run gives one median per timing.
3. bench.judge.compare judges the two sides: exact and memory figures fail at once, every timing
   gets its one-sided test, Holm-corrected over all timings (bench.judge.stats).
4. A timing whose first pass leans worse (stats.worth_confirming, lenient) is re-run: its cases
   only, M more processes a side (M = DEFAULT_CONFIRM_RUNS), in the opposite order (B A B A ...,
   so a drift along the job cannot favour the same side twice). It is then decided on ALL its
   runs, first and confirmation pooled, with the Holm correction still over every timing of the
   first pass. A re-run case that crashes or goes missing in NEW fails the gate.

Skipped with a message and exit 0: not a git checkout, the first commit, a shallow clone that
lacks REV, a REV without `python -m bench` or without the suite (nothing to compare against).
A base revision that cannot run the suite is skipped the same way (say so loudly in CI logs).
Exit 1: a regression (or a likely one, with too few runs), or the working tree could not run the
suite. Exit 2: bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
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

# Runs a side. Simulated (tests/test_stats_simulation.py, log-normal noise between runs, 12
# timings): 10 + 10 detect a 25% slowdown of one timing in 86% of gates at a 15% spread between
# runs (log sd), more below it. On the smoke suite a full run takes 9-10 s and a one-case
# confirmation run ~4.5 s on an idle 2-core machine: a gate took 195-341 s in the 31-gate
# campaign (results/reference/gate-campaign-cpu), within 6 minutes.
DEFAULT_RUNS = 10
DEFAULT_CONFIRM_RUNS = 10


class Skip(Exception):
    """Nothing to compare against: say why, exit 0."""


class GateError(Exception):
    """Bad usage: say why, exit 2."""


class TreeFailed(Exception):
    """The working tree could not run the suite: exit 1."""


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--base", required=True, metavar="REV",
                        help="git revision to compare against: any commit, branch, tag or expression (HEAD~1, "
                             "main, a merge base's hash); .ci/gate.sh passes the merge base with main")
    parser.add_argument("--suite", default="smoke", help="suite name or .toml path (default smoke)")
    parser.add_argument("--runs", type=positive_int, default=DEFAULT_RUNS,
                        help=f"first-pass process runs per side, alternating (default {DEFAULT_RUNS}); with fewer "
                             f"than the one-sided test needs for the suite's timings, timings are only `likely`")
    parser.add_argument("--confirm-runs", type=positive_int, default=DEFAULT_CONFIRM_RUNS,
                        help=f"more runs per side for the cases whose timings lean worse, decided on all runs "
                             f"(default {DEFAULT_CONFIRM_RUNS})")
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
    try:
        options = compare.options_from(args)
    except compare.UnusableInput as e:
        raise GateError(str(e)) from None
    with base_worktree(repo, base_commit) as base_tree:
        suite = check_suite(base_tree, repo, args.suite)
        trees = {"base": base_tree, "new": repo}
        log(f"base {args.base} = {base_commit[:12]}, new = working tree {repo}; suite {args.suite}, "
            f"{args.runs} runs a side (+ {args.confirm_runs} for timings that lean worse); runs in {out}")
        run_sides(trees, out / "first", suite, args, args.runs, order=("base", "new"))
        first_runs = {side: compare.load_side(out / "first" / side) for side in trees}
        first = compare.compare_runs(first_runs["base"], first_runs["new"], options)
        targets = compare.confirmation_targets(first, options)
        final = first
        if targets:
            cases = sorted({case for case, _ in targets})
            log(f"first pass: {len(targets)} timing(s) in {len(cases)} case(s) lean worse: {args.confirm_runs} more "
                f"runs a side of those cases, new first, then each decided on all its runs")
            run_sides(trees, out / "confirm", suite, args, args.confirm_runs, order=("new", "base"), only=cases)
            confirm_runs = {side: compare.load_side(out / "confirm" / side) if (out / "confirm" / side).is_dir()
                            else [] for side in trees}
            pooled_options = compare.Options(**{**vars(options), "metrics": tuple(sorted({m for _, m in targets})),
                                                "family_size": len(first.evidence), "cases": tuple(cases),
                                                "timings": tuple(targets)})
            pooled = compare.compare_runs(first_runs["base"] + confirm_runs["base"],
                                          first_runs["new"] + confirm_runs["new"], pooled_options)
            final = compare.merge_confirmation(first, pooled, targets)
    seconds = time.perf_counter() - started
    regressed = sorted(f"{r.case_id} {r.metric}" for r in final.rows if r.status in final.failing)
    summary = (f"gate: {len(targets)} timing(s) re-run; failing: {', '.join(regressed) or 'none'}; "
               f"{seconds:.0f} s in all; runs kept in {out}")
    if args.format == "json":  # stdout stays one JSON document
        report = json.loads(compare.render(final, "json"))
        report["gate"] = dict(base=args.base, base_commit=base_commit, runs=args.runs, confirm_runs=args.confirm_runs,
                              rerun=[f"{c}/{m}" for c, m in targets], seconds=round(seconds, 1), out=str(out))
        print(json.dumps(report, indent=2))
        for path in compare.write_dashboard(final, args.dashboard_dir or out):
            log(f"wrote {path}")
        log(summary)
    else:
        print(compare.render(final, args.format, args.show_all))
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

def run_sides(trees: dict[str, Path], out: Path, suite: str, args, runs: int, order: tuple[str, str],
              only: list[str] | None = None):
    """`runs` process runs a side, alternating in `order`. The base tree failing is a skip in the
    first pass (nothing trustworthy to compare with); in a confirmation its other runs still count."""
    for i in range(runs):
        for side in order:
            run_dir = out / side / f"run-{i:02d}"
            t0 = time.perf_counter()
            try:
                run_suite(trees[side], run_dir, suite, args, only)
            except TreeFailed as e:
                if side == "new":
                    raise
                if only is None:
                    raise Skip(f"the base revision could not run the suite: {e}") from None
                log(f"WARNING: a confirmation run of the base revision failed; deciding on its other runs: {e}")
                shutil.rmtree(run_dir, ignore_errors=True)
                continue
            log(f"{out.name} run {i + 1}/{runs} {side}: {time.perf_counter() - t0:.1f} s")


def run_suite(tree: Path, run_dir: Path, suite: str, args, only: list[str] | None):
    command = [sys.executable, "-m", "bench", "run", "--suite", suite, "--out", str(run_dir)]
    if args.repeats:
        command += ["--repeats", str(args.repeats)]
    if only:
        command += ["--only", ",".join(only)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]),
           # bench.run.NO_REPORT_ENV, NO_CEILINGS_ENV: CSVs only, no ceilings (a revision without them ignores them)
           "BENCH_NO_REPORT": "1", "BENCH_NO_CEILINGS": "1"}
    env.pop("PYTHONSAFEPATH", None)
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
