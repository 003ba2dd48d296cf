"""A/A spread of the per-run medians, raw against normalized: which should the gate judge?

    python scripts/gate_noise.py --runs 20 --out results/gate-noise       # runs the suite 20 times
    python scripts/gate_noise.py /tmp/c/gates/*-aa                        # or reads runs of identical code
    python scripts/gate_noise.py ... --write results/gate-noise/noise.json  # + a stored A/A calibration

Run it on an otherwise idle machine. For each case and timing, over runs of identical code: the
relative interquartile range of the per-run medians of samples.csv's `value` (raw) and, where the
runs have it, of `normalized` (over the calibration timed in the same process). The verdict is
`normalized` only if it narrows the spread by at least 10% in the median timing AND in most
timings; else `raw`. Set bench.judge.compare.TIMING_SOURCE from it.

--write stores the spread of the chosen source per timing, the A/A calibration that
`python -m bench compare/gate --noise-file` uses in the bar instead of BASE's spread.
Directories are searched for run directories (results.csv + samples.csv + env.json), so a
campaign's A/A gates (scripts/gate_campaign.py) can be read as they are.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.judge import compare, stats  # noqa: E402

NARROWER = 0.9  # normalized must bring the median spread ratio to this or below


def find_runs(paths: list[Path]) -> list[Path]:
    runs = []
    for path in paths:
        candidates = [path, *sorted(p.parent for p in path.glob("**/results.csv"))]
        runs += [p for p in candidates if all((p / n).is_file() for n in ("results.csv", "samples.csv", "env.json"))]
    return sorted(set(runs))


def spreads(run_dirs: list[Path]) -> list[dict]:
    """Per (case, timing): how many runs, and the spread of the per-run medians per source."""
    runs = [compare.load_run(p) for p in run_dirs]
    suites = {r.env.get("suite") for r in runs}
    if len(suites) > 1:
        raise SystemExit(f"runs of several suites: {', '.join(sorted(map(str, suites)))}: give one suite's runs")
    keys = sorted({(c, m) for r in runs for c, m in zip(r.samples["case_id"], r.samples["metric"])})
    table = []
    for case_id, metric in keys:
        row = {"case_id": case_id, "metric": metric}
        for source, column in compare.TIMING_SOURCES.items():
            medians = [float(np.median(v)) for r in runs if column in r.samples
                       for v in r.timing(case_id, metric, column)]
            row[f"{source}_runs"] = len(medians)
            row[source] = stats.relative_spread(medians) if len(medians) >= 4 else float("nan")
        table.append(row)
    return table


def verdict(table: list[dict]) -> tuple[str, str]:
    ratios = np.array([r["normalized"] / r["raw"] for r in table
                       if np.isfinite(r.get("normalized", np.nan)) and np.isfinite(r["raw"]) and r["raw"] > 0])
    if not len(ratios):
        return "raw", "no normalized samples (or too few runs) to compare: raw"
    median, narrower = float(np.median(ratios)), int((ratios < 1).sum())
    source = "normalized" if median <= NARROWER and narrower > len(ratios) / 2 else "raw"
    return source, (f"normalized narrows the spread in {narrower} of {len(ratios)} timings; median ratio "
                    f"normalized/raw {median:.2f} (normalized needs <= {NARROWER} and most timings): judge on "
                    f"{source} (bench.judge.compare.TIMING_SOURCE is now {compare.TIMING_SOURCE!r})")


def run_fresh(out: Path, runs: int, suite: str, repeats: int | None) -> list[Path]:
    dirs = []
    for i in range(runs):
        run_dir = out / f"run-{i:02d}"
        command = [sys.executable, "-m", "bench", "run", "--suite", suite, "--out", str(run_dir)]
        command += ["--repeats", str(repeats)] if repeats else []
        print(f"[noise] run {i + 1}/{runs}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        dirs.append(run_dir)
    return dirs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="*", type=Path, help="run directories of identical code (searched recursively)")
    p.add_argument("--runs", type=int, default=0, help="run the suite this many times first (in --out)")
    p.add_argument("--out", type=Path, default=None, help="with --runs: where the runs go")
    p.add_argument("--suite", default="smoke", help="with --runs: the suite (default smoke)")
    p.add_argument("--repeats", type=int, default=None, help="with --runs: repeats per run (default the suite's)")
    p.add_argument("--write", type=Path, default=None, help="write the A/A calibration (JSON) here")
    args = p.parse_args(argv)
    dirs = list(args.dirs)
    if args.runs:
        if args.out is None:
            p.error("--runs needs --out")
        dirs += run_fresh(args.out, args.runs, args.suite, args.repeats)
    run_dirs = find_runs(dirs)
    if len(run_dirs) < 4:
        p.error(f"found {len(run_dirs)} run directories: give at least 4 runs of identical code")
    table = spreads(run_dirs)
    print(f"{len(run_dirs)} runs; relative IQR of the per-run medians (runs counted per source)")
    print(f"{'case':<62} {'metric':<20} {'runs':>5} {'raw':>7} {'normalized':>10} {'ratio':>6}")
    for r in table:
        ratio = r["normalized"] / r["raw"] if r["raw"] else float("nan")
        print(f"{r['case_id'][:62]:<62} {r['metric']:<20} {r['raw_runs']:>5} {r['raw']:>7.1%} "
              f"{r['normalized']:>10.1%} {ratio:>6.2f}")
    source, words = verdict(table)
    print(words)
    if args.write:
        suite = compare.load_run(run_dirs[0]).env.get("suite")
        spread = {f"{r['case_id']}/{r['metric']}": r[source] for r in table if np.isfinite(r[source])}
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps({"suite": suite, "source": source, "runs": len(run_dirs),
                                          "spread": spread}, indent=2) + "\n")
        print(f"wrote {args.write} ({len(spread)} timings, {source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
