"""Measure the gate on this machine: false alarms, detection of a real slowdown, a speed-up, time.

    python scripts/gate_campaign.py --out results/gate-campaign            # 20 A/A, 10 slow, 2 fast
    python scripts/gate_campaign.py --out /tmp/c --aa 1 --slow 1 --fast 0 --runs 3 --confirm-runs 2  # a try

Run it from a clean checkout on an otherwise idle machine (it takes about 32 gates x 4-6 minutes).
What it measures, with the committed code at HEAD:
- A/A: `python -m bench gate --base HEAD` in a worktree of HEAD (identical code both sides);
- slow: the same in a worktree of HEAD with one line changed, bench/measure/runner.py's
  TEST_SLOW_DECODE = "CASE:FACTOR": a real code change that makes CASE's decode step FACTOR times
  as slow by proportional work inside the step (runner.slow_decode_for_test);
- fast: in the worktree of HEAD, `gate --base F`, F a scratch commit whose CASE decode is
  1 / (1 - SPEEDUP) times as slow: NEW is SPEEDUP faster than its base.
The gates alternate (A/A, slow, A/A, slow, ..., the fast ones spread among them) so that a drift
of the machine over the campaign touches every kind alike. Before the gates, an in-process check
times CASE's decode step with and without the change, interleaved, to show the slowdown is real.

Writes OUT/campaign.csv (one row per gate) and OUT/campaign.md (that table and the verdict), and
keeps each gate's runs in OUT/gates/ (CSVs only: plots are pruned), for scripts/gate_noise.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CASE = "yoco-swa-tiny-b1-s512-g36-w64-none-float32-torch-eager"
METRIC = "decode_ms_per_step"
HOOK_FILE = Path("bench/measure/runner.py")
HOOK_LINE = 'TEST_SLOW_DECODE = ""'
GATE_MINUTES = 6

HOOK_CHECK = r'''
import json, sys, time
import numpy as np, torch
from bench import suite
from bench.measure import runner
case_id, suite_name, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
the_suite = suite.load_suite(suite_name)
case = next(c for c in the_suite.cases if c.case_id == case_id)
if the_suite.threads:
    torch.set_num_threads(the_suite.threads)
slowed = runner.build_model(case, "cpu")  # this tree: with the change
runner.TEST_SLOW_DECODE = ""
plain = runner.build_model(case, "cpu")
tokens = torch.randint(0, 100, (case.batch, case.seq_len))
steps = case.gen_len
ratios = []
with torch.inference_mode():
    for _ in range(blocks):
        times = []
        for model in (plain, slowed):
            cache = model.allocate_cache(case.batch, case.seq_len + steps)
            nxt = model.prefill(tokens, cache).argmax(-1)
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = model.decode_step(nxt, cache).argmax(-1)
            times.append(time.perf_counter() - t0)
        ratios.append(times[1] / times[0])
print(json.dumps({"median": float(np.median(ratios)), "p25": float(np.percentile(ratios, 25)),
                  "p75": float(np.percentile(ratios, 75)), "blocks": blocks}))
'''


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="campaign directory (must not exist or be empty)")
    p.add_argument("--aa", type=int, default=20, help="gates of identical code (default 20)")
    p.add_argument("--slow", type=int, default=10, help="gates against the slowed decode (default 10)")
    p.add_argument("--fast", type=int, default=2, help="gates against a base with a slower decode (default 2)")
    p.add_argument("--case", default=DEFAULT_CASE, help=f"the case whose decode changes (default {DEFAULT_CASE})")
    p.add_argument("--slowdown", type=float, default=1.25, help="decode time factor of the slow gates (default 1.25)")
    p.add_argument("--speedup", type=float, default=0.25, help="the fast gates' NEW is this much faster (default 0.25)")
    p.add_argument("--suite", default="smoke", help="the gate's suite (default smoke)")
    p.add_argument("--hook-check-blocks", type=int, default=30,
                   help="interleaved blocks of the in-process check of the change (0: skip; default 30)")
    p.add_argument("--append", action="store_true",
                   help="add the gates to OUT's campaign: allowed when OUT was measured with the same code "
                        "(bench/, yoco/, baselines/ trees) and the same options; --aa/--slow/--fast count the "
                        "new gates")
    p.add_argument("gate_args", nargs=argparse.REMAINDER,
                   help="after --: options for every `python -m bench gate` (e.g. -- --runs 3 --confirm-runs 2)")
    args, extra = p.parse_known_args(argv)
    gate_args = [a for a in (args.gate_args + extra) if a != "--"]
    if args.out.exists() and any(args.out.iterdir()) and not args.append:
        p.error(f"--out {args.out} is not empty (--append adds gates to a campaign of the same code)")
    if not 0 < args.speedup < 1 or args.slowdown < 1:
        p.error("--slowdown must be >= 1 and --speedup in (0, 1)")
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    if dirty:
        p.error(f"the checkout has uncommitted changes: the campaign measures HEAD; commit or stash first\n{dirty}")
    head = git("rev-parse", "HEAD").strip()
    setup = dict(code=code_trees(), suite=args.suite, case=args.case, slowdown=args.slowdown,
                 speedup=args.speedup, gate_args=gate_args)
    rows = previous_rows(args.out, setup) if args.append else []
    if args.append and not rows:
        log(f"--append: no earlier gates in {args.out}: a new campaign")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "campaign.json").write_text(json.dumps(setup, indent=2))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # worktrees still removed
    scratch = Path(tempfile.mkdtemp(prefix="gate-campaign-"))
    trees = {}
    try:
        trees["same"] = worktree(scratch / "same", head)
        trees["slow"] = worktree(scratch / "slow", head)
        plant(trees["slow"], args.case, args.slowdown)
        based = worktree(scratch / "slower-base", head)
        plant(based, args.case, 1 / (1 - args.speedup))
        git("-c", "user.name=gate-campaign", "-c", "user.email=gate@campaign", "commit", "-q", "-am",
            f"scratch: {args.case} decode x{1 / (1 - args.speedup):.4g} (gate campaign)", cwd=based)
        slower_base = git("rev-parse", "HEAD", cwd=based).strip()
        trees["slower-base"] = based
        log(f"HEAD {head[:12]}; slow tree {trees['slow']}; slower base {slower_base[:12]}; gates: "
            f"{args.aa} A/A, {args.slow} slow, {args.fast} fast; gate options: {' '.join(gate_args) or '(defaults)'}")
        hook = hook_check(trees["slow"], args.case, args.suite, args.hook_check_blocks)
        if hook:
            log(f"in-process check of the change: decode x{hook['median']:.3f} "
                f"(p25 {hook['p25']:.3f}, p75 {hook['p75']:.3f}, {hook['blocks']} interleaved blocks)")
        plan = schedule(args.aa, args.slow, args.fast)
        total = len(rows) + len(plan)
        for i, kind in enumerate(plan, start=len(rows)):
            tree, base = {"aa": (trees["same"], "HEAD"), "slow": (trees["slow"], "HEAD"),
                          "fast": (trees["same"], slower_base)}[kind]
            out = (args.out / "gates" / f"{i:02d}-{kind}").resolve()
            row = run_gate(tree, base, out, args.suite, gate_args, kind, args.case)
            row.update(n=i, commit=head[:12])
            rows.append(row)
            log(f"gate {i + 1}/{total} {kind}: exit {row['exit']}, {row['seconds']:.0f} s, "
                f"failing: {row['failing'] or 'none'}; target {row['target_status']} x{row['target_ratio']}")
            write_outputs(args.out, rows, head, args, hook, gate_args)
        print(verdict(rows, args))
        return 0
    finally:
        for tree in trees.values():
            git("worktree", "remove", "--force", str(tree), check=False)
        git("worktree", "prune", check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def code_trees() -> dict[str, str]:
    """The git tree hashes of the code a gate runs: equal hashes, identical code (docs may differ)."""
    return {d: git("rev-parse", f"HEAD:{d}").strip() for d in ("bench", "yoco", "baselines")}


def previous_rows(out: Path, setup: dict) -> list[dict]:
    """The gates of an earlier campaign in OUT, refused unless its code and options are these."""
    if not (out / "campaign.csv").is_file():
        return []
    try:
        before = json.loads((out / "campaign.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"--append: {out}/campaign.json is missing or unreadable: cannot tell its code") from None
    differ = sorted(k for k in setup if before.get(k) != setup[k])
    if differ:
        raise SystemExit(f"--append: {out} was measured with other {', '.join(differ)}: start a new campaign")
    with open(out / "campaign.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["exit"] = int(row["exit"])
        row["seconds"] = float(row["seconds"])
    return rows


def git(*args: str, cwd: Path = REPO, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def worktree(path: Path, commit: str) -> Path:
    git("worktree", "add", "--detach", "--quiet", str(path), commit)
    return path


def plant(tree: Path, case: str, factor: float):
    """The code change: the test-only slowdown of one case's decode step, set in the source."""
    path = tree / HOOK_FILE
    text = path.read_text()
    if text.count(HOOK_LINE) != 1:
        raise SystemExit(f"{HOOK_FILE}: expected exactly one line {HOOK_LINE!r} to change")
    path.write_text(text.replace(HOOK_LINE, f'TEST_SLOW_DECODE = "{case}:{factor!r}"'))


def hook_check(tree: Path, case: str, suite: str, blocks: int) -> dict | None:
    if blocks <= 0:
        return None
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("BENCH_TEST_SLOW_DECODE", None)
    result = subprocess.run([sys.executable, "-c", HOOK_CHECK, case, suite, str(blocks)], cwd=tree, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the in-process check of the change failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def schedule(aa: int, slow: int, fast: int) -> list[str]:
    """A/A and slow alternating, the fast gates spread evenly among them."""
    plan = []
    for i in range(max(aa, slow)):
        plan += (["aa"] if i < aa else []) + (["slow"] if i < slow else [])
    for j in range(fast):
        plan.insert(round((j + 1) * len(plan) / (fast + 1)) + j, "fast")
    return plan


def run_gate(tree: Path, base: str, out: Path, suite: str, gate_args: list[str], kind: str, case: str) -> dict:
    command = [sys.executable, "-m", "bench", "gate", "--base", base, "--suite", suite, "--format", "json",
               "--out", str(out), *gate_args]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("BENCH_TEST_SLOW_DECODE", None)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    (out.parent / f"{out.name}.log").write_text(result.stderr)
    prune(out)
    row = dict(kind=kind, exit=result.returncode, seconds=round(seconds, 1), load_before=round(load_before, 2),
               load_after=round(os.getloadavg()[0], 2), failing="", improved="", rerun="", target_status="",
               target_ratio="", target_ci="", target_p="", target_runs="")
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        row["failing"] = f"(no report: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'})"
        return row
    failing = ("regressed", "missing", "likely regressed")
    row["failing"] = "; ".join(f"{r['case_id']} {r['metric']}" for r in report["rows"] if r["status"] in failing)
    row["improved"] = "; ".join(f"{r['case_id']} {r['metric']}" for r in report["rows"]
                                if r["status"] in ("improved", "likely improved"))
    row["rerun"] = "; ".join(report.get("gate", {}).get("rerun", []))
    target = next((r for r in report["rows"] if (r["case_id"], r["metric"]) == (case, METRIC)), None)
    if target:
        row.update(target_status=target["status"], target_ratio=_num(target["ratio"]), target_p=_num(target["p"]),
                   target_ci=f"[{_num(target['ratio_low'])}, {_num(target['ratio_high'])}]",
                   target_runs=target["runs"])
    return row


def _num(value) -> str:
    return "" if value is None else f"{value:.3g}"


def prune(out: Path):
    """Keep results.csv, samples.csv and env.json of each run: plots would fill the disk."""
    for plots in out.glob("**/plots"):
        shutil.rmtree(plots, ignore_errors=True)
    for name in ("summary.md", "report.html"):
        for path in out.glob(f"**/{name}"):
            path.unlink()


def caught(row: dict, case: str) -> bool:
    return row["exit"] == 1 and f"{case} {METRIC}" in row["failing"].split("; ")


def verdict(rows: list[dict], args) -> str:
    aa = [r for r in rows if r["kind"] == "aa"]
    slow = [r for r in rows if r["kind"] == "slow"]
    fast = [r for r in rows if r["kind"] == "fast"]
    longest = max((r["seconds"] for r in rows), default=0)
    improved = sum(r["exit"] == 0 and r["target_status"] == "improved" for r in fast)
    lines = [
        f"A/A (identical code): {sum(r['exit'] != 0 for r in aa)} of {len(aa)} failed (target: 0 of >= 20)",
        f"slow (decode x{args.slowdown:g} of {args.case}): {sum(caught(r, args.case) for r in slow)} of {len(slow)} "
        f"failed naming it and {METRIC} (target: >= 9 of >= 10); other timings failed in "
        f"{sum(bool(set(r['failing'].split('; ')) - {'', f'{args.case} {METRIC}'}) for r in slow)}",
        f"fast (NEW {args.speedup:.0%} faster): {improved} of {len(fast)} reported improved with exit 0",
        f"longest gate: {longest:.0f} s (target: <= {GATE_MINUTES * 60} s); median "
        f"{sorted(r['seconds'] for r in rows)[len(rows) // 2] if rows else 0:.0f} s",
    ]
    return "\n".join(lines)


def write_outputs(out: Path, rows: list[dict], head: str, args, hook: dict | None, gate_args: list[str]):
    columns = ["n", "commit", "kind", "exit", "seconds", "target_status", "target_ratio", "target_ci", "target_p",
               "target_runs", "failing", "improved", "rerun", "load_before", "load_after"]
    with open(out / "campaign.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    table = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    table += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in columns) + " |" for r in rows]
    hook_line = (f"in-process check of the change: decode x{hook['median']:.3f} (p25 {hook['p25']:.3f}, "
                 f"p75 {hook['p75']:.3f})" if hook else "in-process check skipped")
    (out / "campaign.md").write_text(
        f"# Gate campaign at {', '.join(sorted({r.get('commit') or head[:12] for r in rows}))}\n\n"
        f"`python scripts/gate_campaign.py {' '.join(sys.argv[1:])}`: suite {args.suite}, gate options "
        f"`{' '.join(gate_args) or '(defaults)'}`, target {args.case} {METRIC}, {os.cpu_count()} CPUs.\n"
        f"{hook_line}.\n\n" + "\n".join(table) + "\n\n```\n" + verdict(rows, args) + "\n```\n")


def log(message: str):
    print(f"[campaign] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
