"""Does dividing by the calibration make runs of the same code agree better? An A/A measurement.

    python scripts/aa_spread.py --suite smoke --runs 10 --out /tmp/aa          # run, then analyse
    python scripts/aa_spread.py --out /tmp/aa --analyse-only                   # analyse runs already there

Runs the suite K times, each `python -m bench run` a process of its own, one after another
(DIR/run-01 ... DIR/run-K; a run already complete is kept, so a killed measurement resumes).
Then, per case and timing metric, takes one value per run (the median of that run's samples, as
the gate does, bench.judge.compare) three ways:
- raw: samples.csv's `value`;
- normalized: samples.csv's `normalized` (value over the case process's calibration, the
  geometric mean of its calibration before and after the timed phases);
- before-only: value over results.csv's `calibration_before_ms` alone;
and compares their between-run spread: the relative interquartile range (p75 - p25) / median
of the K per-run values (the gate's noise measure, bench.judge.stats.relative_spread) and the
coefficient of variation. A normalization earns its place only if it narrows the spread in
most case-metric pairs. Writes DIR/aa_spread.csv (one line per pair) and DIR/aa_spread.md (the
verdict), and prints the latter. Measure on an otherwise idle machine: the point is the
spread the code and the machine make, not a neighbour's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
WAYS = ("raw", "normalized", "before_only")


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("run-*") if (p / "results.csv").is_file() and (p / "summary.md").is_file())


def measure(out: Path, suite: str, runs: int, device: str, only: str | None, threads: int | None):
    out.mkdir(parents=True, exist_ok=True)
    for k in range(1, runs + 1):
        run = out / f"run-{k:02d}"
        if (run / "summary.md").is_file():  # complete: keep it
            continue
        if run.exists():  # killed midway: finish it
            cmd = [sys.executable, "-m", "bench", "run", "--resume", str(run)]
        else:
            cmd = [sys.executable, "-m", "bench", "run", "--suite", suite, "--device", device, "--out", str(run)]
            cmd += ["--only", only] if only else []
            cmd += ["--threads", str(threads)] if threads else []
        print(f"[{k}/{runs}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SystemExit(f"run {k} failed (exit {done.returncode}): see its output above")


def per_run_values(run: Path) -> pd.DataFrame:
    """One line per (case, metric): the run's median of each way."""
    samples = pd.read_csv(run / "samples.csv")
    results = pd.read_csv(run / "results.csv").set_index("case_id")
    ok = set(results.index[results["status"] == "ok"])
    samples = samples[samples["case_id"].isin(ok)].copy()
    samples["raw"] = samples["value"]
    before = results["calibration_before_ms"] if "calibration_before_ms" in results else pd.Series(dtype=float)
    samples["before_only"] = samples["value"] / samples["case_id"].map(before)
    grouped = samples.groupby(["case_id", "metric"])[list(WAYS)].median().reset_index()
    grouped["run"] = run.name
    return grouped


def relative_iqr(values: np.ndarray) -> float:
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return float((p75 - p25) / abs(p50)) if p50 else float("nan")


def spread_table(runs: list[Path]) -> pd.DataFrame:
    """Per (case, metric): each way's relative IQR and coefficient of variation over the runs."""
    values = pd.concat([per_run_values(r) for r in runs], ignore_index=True)
    lines = []
    for (case_id, metric), group in values.groupby(["case_id", "metric"], sort=False):
        line = {"case_id": case_id, "metric": metric, "runs": len(group)}
        for way in WAYS:
            v = group[way].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            line[f"{way}_rel_iqr"] = relative_iqr(v) if len(v) >= 3 else float("nan")
            line[f"{way}_cv"] = float(np.std(v, ddof=1) / np.mean(v)) if len(v) >= 2 else float("nan")
        lines.append(line)
    return pd.DataFrame(lines)


def verdict(table: pd.DataFrame) -> str:
    out = [f"# A/A spread: {table['runs'].max()} runs, {len(table)} case-metric pairs", "",
           "Per pair, the spread of the per-run medians (relative IQR, the gate's noise measure; CV beside it). "
           "A normalization is worth keeping only if it narrows the spread in most pairs.", ""]
    for way in ("normalized", "before_only"):
        for measure in ("rel_iqr", "cv"):
            raw, other = table[f"raw_{measure}"], table[f"{way}_{measure}"]
            both = raw.notna() & other.notna()
            narrower = int((other[both] < raw[both]).sum())
            ratio = float(np.median(other[both] / raw[both])) if both.any() else float("nan")
            out.append(f"- {way} vs raw, {measure}: narrower in {narrower} of {int(both.sum())} pairs; median "
                       f"spread ratio {way}/raw {ratio:.3g}")
    for metric, group in table.groupby("metric"):
        raw, norm = group["raw_rel_iqr"], group["normalized_rel_iqr"]
        out.append(f"- {metric}: median relative IQR raw {raw.median():.3g}, normalized {norm.median():.3g}")
    out += ["", "| case_id | metric | raw rel IQR | normalized rel IQR | before-only rel IQR | raw CV | "
                "normalized CV |", "|---|---|---|---|---|---|---|"]
    out += [f"| {r.case_id} | {r.metric} | {r.raw_rel_iqr:.3g} | {r.normalized_rel_iqr:.3g} | "
            f"{r.before_only_rel_iqr:.3g} | {r.raw_cv:.3g} | {r.normalized_cv:.3g} |" for r in table.itertuples()]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (DIR/run-NN) and the verdict")
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--runs", type=int, default=10, help="independent runs of the suite (K; 3 or more)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", default=None, help="CASE_ID[,CASE_ID...]: passed to python -m bench run")
    parser.add_argument("--threads", type=int, default=None, help="passed to python -m bench run")
    parser.add_argument("--analyse-only", action="store_true", help="run nothing: analyse the runs in --out")
    args = parser.parse_args(argv)
    if not args.analyse_only:
        if args.runs < 3:
            parser.error(f"--runs must be >= 3 (a spread needs three runs), got {args.runs}")
        measure(args.out, args.suite, args.runs, args.device, args.only, args.threads)
    runs = run_dirs(args.out)
    if len(runs) < 3:
        print(f"error: {args.out} holds {len(runs)} complete run(s); a spread needs 3 or more", file=sys.stderr)
        return 2
    table = spread_table(runs)
    table.to_csv(args.out / "aa_spread.csv", index=False)
    text = verdict(table)
    (args.out / "aa_spread.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
