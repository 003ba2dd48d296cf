"""`python -m bench compare BASE NEW`: did NEW get slower or bigger than BASE? Files only.

BASE and NEW are run directories written by `python -m bench run` (results.csv, samples.csv,
env.json), or directories holding several of them (one per process run, as `gate` writes):
timing metrics need several runs a side, since the unit of comparison is one median per run
(see bench.judge.stats). Per metric kind:
- timing: the per-run medians of samples.csv's `normalized` column (the sample over a
  calibration timed beside it in the same process), judged by bench.judge.stats.decide;
- exact (kv_cache_bytes, weight_bytes, params): must match exactly;
- memory (peak bytes): must stay within 2% + 1 MiB.
A case in BASE but missing (or failed) in NEW is a regression; one only in NEW is reported new.

Exit status: 0 no regression, 1 a regression, 2 unusable input (one message, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.judge import stats


@dataclass(frozen=True)
class Metric:
    kind: str  # "timing", "exact" or "memory"
    lower_is_better: bool
    unit: str


# The one table of directions. Names are results.csv columns; samples.csv uses the same names.
METRICS: dict[str, Metric] = {
    "prefill_ms": Metric("timing", True, "ms"),
    "decode_ms_per_step": Metric("timing", True, "ms"),
    "prefill_tok_s": Metric("timing", False, "tok/s"),
    "decode_tok_s": Metric("timing", False, "tok/s"),
    "decode_mbu": Metric("timing", False, "fraction"),
    "prefill_mfu": Metric("timing", False, "fraction"),
    "peak_mem_prefill_bytes": Metric("memory", True, "bytes"),
    "peak_mem_decode_bytes": Metric("memory", True, "bytes"),
    "kv_cache_bytes": Metric("exact", True, "bytes"),
    "weight_bytes": Metric("exact", True, "bytes"),
    "params": Metric("exact", True, "count"),
}
MEMORY_TOLERANCE = 0.02  # relative ...
MEMORY_SLACK_BYTES = 1 << 20  # ... plus 1 MiB
FAILING = ("regressed", "missing")
STATUS_ORDER = ("regressed", "missing", "unconfirmed", "improved", "new", "unchanged")
SAMPLES_COLUMNS = ("case_id", "metric", "repeat", "value", "calibration_ms", "normalized")
RESULTS_COLUMNS = ("case_id", "status")
ENV_KEYS = ("suite", "device")


class UnusableInput(Exception):
    """Input the comparison cannot trust: main prints the message and exits 2."""


@dataclass
class Run:
    """One `python -m bench run` output directory."""

    path: Path
    env: dict
    results: pd.DataFrame  # indexed by case_id
    samples: pd.DataFrame


@dataclass
class Row:
    case_id: str
    metric: str
    status: str
    base: float = math.nan  # median over runs (raw value, in unit)
    new: float = math.nan
    ratio: float = math.nan  # compared figure: new / base (normalized for timings)
    raw_ratio: float = math.nan  # timings: ratio of the raw (not normalized) medians
    p: float = math.nan
    threshold: float = math.nan
    unit: str = ""
    runs: str = ""  # "n_base/n_new" per-run values behind a timing
    note: str = ""


@dataclass
class Options:
    alpha: float = 0.01
    max_slowdown: float = 0.05
    noise_factor: float = stats.NOISE_FACTOR
    metrics: tuple[str, ...] | None = None  # None: timings in samples.csv + exact + memory
    allow_mismatch: bool = False


@dataclass
class Comparison:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.status in FAILING for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {s: n for s in STATUS_ORDER if (n := sum(r.status == s for r in self.rows))}


# ---- reading ----

def load_side(path: str | Path) -> list[Run]:
    """A run directory, or a directory whose subdirectories are run directories."""
    path = Path(path)
    if not path.is_dir():
        raise UnusableInput(f"{path}: no such directory")
    if (path / "results.csv").exists() or (path / "samples.csv").exists():
        return [load_run(path)]
    run_dirs = sorted(p for p in path.iterdir() if p.is_dir() and (p / "results.csv").exists())
    if not run_dirs:
        raise UnusableInput(f"{path}: no results.csv in it or in its subdirectories; "
                            f"expected the --out directory of `python -m bench run`")
    return [load_run(p) for p in run_dirs]


def load_run(path: Path) -> Run:
    for name in ("results.csv", "samples.csv", "env.json"):
        if not (path / name).is_file():
            raise UnusableInput(f"{path / name}: missing; a run directory holds results.csv, samples.csv "
                                f"and env.json (written by `python -m bench run --out DIR`)")
    try:
        env = json.loads((path / "env.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnusableInput(f"{path / 'env.json'}: unreadable ({e})") from None
    if not isinstance(env, dict) or any(k not in env for k in ENV_KEYS):
        raise UnusableInput(f"{path / 'env.json'}: wrong schema: needs keys {', '.join(ENV_KEYS)}")
    results = read_csv(path / "results.csv", RESULTS_COLUMNS)
    if results["case_id"].duplicated().any():
        dup = results["case_id"][results["case_id"].duplicated()].iloc[0]
        raise UnusableInput(f"{path / 'results.csv'}: case_id {dup!r} appears more than once")
    samples = read_csv(path / "samples.csv", SAMPLES_COLUMNS)
    for column in ("value", "normalized"):
        values = pd.to_numeric(samples[column], errors="coerce")
        garbage = values.isna() & ~samples[column].str.strip().str.lower().isin(["", "nan"])
        if garbage.any():
            bad = samples[column][garbage].iloc[0]
            raise UnusableInput(f"{path / 'samples.csv'}: {column} {bad!r} is not a number")
        samples[column] = values
    for column in METRICS:
        if column in results:
            results[column] = pd.to_numeric(results[column], errors="coerce")
    return Run(path, env, results.set_index("case_id", drop=False), samples)


def read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """A CSV that must be complete: every row as wide as the header, a final newline."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UnusableInput(f"{path}: unreadable ({e})") from None
    if not text.strip():
        raise UnusableInput(f"{path}: empty file")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
        rows = []
        for row in reader:
            if len(row) != len(header):
                raise UnusableInput(f"{path}: truncated or malformed: line {reader.line_num} has {len(row)} "
                                    f"fields, the header has {len(header)}")
            rows.append(row)
    except csv.Error as e:
        raise UnusableInput(f"{path}: malformed CSV at line {reader.line_num} ({e})") from None
    if not text.endswith("\n"):
        raise UnusableInput(f"{path}: truncated: the last line has no newline")
    missing = [c for c in required if c not in header]
    if missing:
        raise UnusableInput(f"{path}: wrong schema: missing column(s) {', '.join(missing)}")
    frame = pd.DataFrame(rows, columns=header)
    frame["case_id"] = frame["case_id"].astype(str)
    return frame


def check_same_setup(base: list[Run], new: list[Run], allow_mismatch: bool) -> list[str]:
    """Suite and device must agree across all runs; a mismatch is unusable unless allowed."""
    problems = []
    reference = base[0]
    for run in base[1:] + new:
        for key in ("suite", "device", "device_name"):
            a, b = reference.env.get(key), run.env.get(key)
            if key == "device_name" and (a is None or b is None):
                continue
            if a != b:
                problems.append(f"different {key}: {reference.path} has {a!r}, {run.path} has {b!r}")
    if problems and not allow_mismatch:
        raise UnusableInput(problems[0] + " (pass --allow-mismatch to compare anyway)")
    return [f"warning: {p}" for p in problems]


# ---- comparing ----

def compare_runs(base: list[Run], new: list[Run], options: Options | None = None) -> Comparison:
    options = options or Options()
    notes = check_same_setup(base, new, options.allow_mismatch)
    metrics = options.metrics or default_metrics(base + new)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UnusableInput(f"unknown metric {unknown[0]!r}: valid metrics are {', '.join(METRICS)}")
    base_ok, new_ok = ok_cases(base), ok_cases(new)
    rows = []
    for case_id in list(base_ok) + [c for c in new_ok if c not in base_ok]:
        if case_id not in new_ok:
            rows.append(Row(case_id, "-", "missing", note=f"coverage lost: {why_missing(new, case_id)}"))
        elif case_id not in base_ok:
            rows.append(Row(case_id, "-", "new", note="only in NEW"))
        else:
            for metric in metrics:
                row = compare_metric(case_id, metric, base_ok[case_id], new_ok[case_id], options)
                if row is not None:
                    rows.append(row)
    if any(METRICS[m].kind == "timing" for m in metrics):
        smallest = stats.min_attainable_p(len(base), len(new))
        if smallest >= options.alpha:
            notes.append(f"note: with {len(base)} run(s) in BASE and {len(new)} in NEW, the smallest possible "
                         f"p is {smallest:.3g} >= alpha {options.alpha}: no timing can be flagged. Compare "
                         f"directories of several runs (as `gate` writes), 5 or more a side for alpha 0.01.")
    return Comparison(rows, notes)


def why_missing(runs: list[Run], case_id: str) -> str:
    for run in runs:
        if case_id in run.results.index:
            row = run.results.loc[case_id]
            error = str(row.get("error", "") or "").strip()
            return f"{row['status']} in NEW" + (f": {error[:120]}" if error else "")
    return "not in NEW"


def default_metrics(runs: list[Run]) -> tuple[str, ...]:
    timed = set().union(*(set(r.samples["metric"]) for r in runs))
    return tuple(m for m, spec in METRICS.items() if spec.kind != "timing" or m in timed)


def ok_cases(runs: list[Run]) -> dict[str, list[Run]]:
    """case_id -> the runs in which that case succeeded, in first-seen order."""
    cases: dict[str, list[Run]] = {}
    for run in runs:
        for case_id, status in run.results["status"].items():
            if str(status).strip().lower() == "ok":
                cases.setdefault(case_id, []).append(run)
    return cases


def compare_metric(case_id: str, metric: str, base: list[Run], new: list[Run], options: Options) -> Row | None:
    spec = METRICS[metric]
    if spec.kind == "timing":
        return compare_timing(case_id, metric, base, new, options)
    base_values = result_values(base, case_id, metric)
    new_values = result_values(new, case_id, metric)
    if not base_values and not new_values:
        return None  # not measured on this device (e.g. no allocator figures)
    if not new_values:
        return Row(case_id, metric, "missing", unit=spec.unit, note="measured in BASE, not in NEW")
    if not base_values:
        return Row(case_id, metric, "new", new=float(np.median(new_values)), unit=spec.unit,
                   note="not measured in BASE")
    b, n = float(np.median(base_values)), float(np.median(new_values))
    row = Row(case_id, metric, "unchanged", b, n, n / b if b else math.nan, unit=spec.unit)
    if spec.kind == "exact":
        varies = [side for side, v in (("BASE", base_values), ("NEW", new_values)) if len(set(v)) > 1]
        if varies:
            row.note = f"varies between runs in {' and '.join(varies)}"
        if set(base_values) != set(new_values):
            row.status = "regressed"
            row.note = "must match exactly" + (f"; {row.note}" if row.note else "")
        return row
    slack = MEMORY_TOLERANCE * b + MEMORY_SLACK_BYTES
    row.threshold = slack / b if b else math.nan
    worse = n - b if spec.lower_is_better else b - n
    if worse > slack:
        row.status, row.note = "regressed", "beyond 2% + 1 MiB"
    elif -worse > slack:
        row.status = "improved"
    return row


def result_values(runs: list[Run], case_id: str, metric: str) -> list[float]:
    values = [r.results.at[case_id, metric] for r in runs if metric in r.results.columns]
    return [float(v) for v in values if not pd.isna(v)]


def compare_timing(case_id: str, metric: str, base: list[Run], new: list[Run], options: Options) -> Row | None:
    spec = METRICS[metric]
    base_norm, base_raw = per_run_medians(base, case_id, metric)
    new_norm, new_raw = per_run_medians(new, case_id, metric)
    if not base_norm and not new_norm:
        return None
    if not new_norm:
        return Row(case_id, metric, "missing", unit=spec.unit, note="timed in BASE, not in NEW")
    if not base_norm:
        return Row(case_id, metric, "new", new=float(np.median(new_raw)), unit=spec.unit,
                   note="not timed in BASE")
    d = stats.decide(base_norm, new_norm, lower_is_better=spec.lower_is_better, alpha=options.alpha,
                     min_effect=options.max_slowdown, noise_factor=options.noise_factor)
    b, n = float(np.median(base_raw)), float(np.median(new_raw))
    return Row(case_id, metric, d.status, b, n, d.ratio, n / b if b else math.nan, d.p, d.threshold,
               spec.unit, f"{len(base_norm)}/{len(new_norm)}")


def per_run_medians(runs: list[Run], case_id: str, metric: str) -> tuple[list[float], list[float]]:
    """One (normalized, raw) median per run: the unit of comparison."""
    normalized, raw = [], []
    for run in runs:
        s = run.samples
        mine = s[(s["case_id"] == case_id) & (s["metric"] == metric)]
        mine = mine[np.isfinite(mine["normalized"]) & np.isfinite(mine["value"])]
        if len(mine):
            normalized.append(float(mine["normalized"].median()))
            raw.append(float(mine["value"].median()))
    return normalized, raw


def mark_unconfirmed(first: Comparison, confirmation: Comparison) -> Comparison:
    """A timing flagged in `first` fails only if `confirmation` (fresh runs) flags it again."""
    again = {(r.case_id, r.metric) for r in confirmation.rows if r.status == "regressed"}
    rows = []
    for row in first.rows:
        if row.status == "regressed" and METRICS.get(row.metric, Metric("", True, "")).kind == "timing":
            if (row.case_id, row.metric) in again:
                row.note = "confirmed by re-run" + (f"; {row.note}" if row.note else "")
            else:
                row.status, row.note = "unconfirmed", "did not repeat on re-run"
        rows.append(row)
    return Comparison(rows, first.notes + confirmation.notes)


# ---- showing ----

def to_frame(comparison: Comparison) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in comparison.rows], columns=list(Row.__dataclass_fields__))
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    return frame.sort_values("status", key=lambda s: s.map(rank), kind="stable").reset_index(drop=True)


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and abs(value) >= 1e5:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def display_frame(comparison: Comparison) -> pd.DataFrame:
    frame = to_frame(comparison)
    shown = pd.DataFrame({
        "case": frame["case_id"], "metric": frame["metric"], "status": frame["status"],
        "base": frame["base"].map(_fmt), "new": frame["new"].map(_fmt), "unit": frame["unit"],
        "ratio": frame["ratio"].map(lambda v: _fmt(v, 3)), "raw ratio": frame["raw_ratio"].map(lambda v: _fmt(v, 3)),
        "p": frame["p"].map(lambda v: _fmt(v, 2)), "runs": frame["runs"], "note": frame["note"],
    })
    return shown


def summary_line(comparison: Comparison) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in comparison.counts().items()) or "nothing to compare"
    verdict = "FAIL: regression" if comparison.failed else "OK: no regression"
    return f"{verdict} ({counts})"


def render(comparison: Comparison, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"failed": comparison.failed, "counts": comparison.counts(), "notes": comparison.notes,
                           "rows": [_json_row(r) for r in comparison.rows]}, indent=2)
    shown = display_frame(comparison)
    if fmt == "markdown":
        body = markdown_table(shown) if len(shown) else "_no rows_"
        notes = "".join(f"\n> {n}" for n in comparison.notes)
        return f"{body}\n\n**{summary_line(comparison)}**{notes}\n"
    body = shown.to_string(index=False) if len(shown) else "(no rows)"
    return "\n".join([body, *comparison.notes, summary_line(comparison)])


def markdown_table(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [[str(v).replace("|", "\\|") for v in row] for row in frame.values]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "---|" * len(frame.columns))
    return "\n".join(lines)


def _json_row(row: Row) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(row).items()}


def dashboard_entries(comparison: Comparison) -> dict[str, list[dict]]:
    """github-action-benchmark's customSmallerIsBetter / customBiggerIsBetter lists, NEW's values."""
    entries: dict[str, list[dict]] = {"smaller": [], "bigger": []}
    for row in comparison.rows:
        if row.metric not in METRICS or not math.isfinite(row.new):
            continue
        extra = f"status={row.status} base={_fmt(row.base)} ratio={_fmt(row.ratio, 3)} p={_fmt(row.p, 2)}"
        side = "smaller" if METRICS[row.metric].lower_is_better else "bigger"
        entries[side].append({"name": f"{row.case_id}/{row.metric}", "unit": row.unit, "value": row.new,
                              "extra": extra})
    return entries


def write_dashboard(comparison: Comparison, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for side, entries in dashboard_entries(comparison).items():
        path = directory / f"benchmark-{side}-is-better.json"
        path.write_text(json.dumps(entries, indent=2) + "\n")
        paths.append(path)
    return paths


# ---- command line ----

def fraction(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction: write 5% or 0.05") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: allowed 0% to <100% (or 0 to <1)")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"alpha {text!r} is out of range: allowed 0 < alpha < 1")
    return value


def metric_list(text: str) -> tuple[str, ...]:
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {bad[0] if bad else text!r}: valid metrics are "
                                         f"{', '.join(METRICS)}")
    return names


def add_options(parser: argparse.ArgumentParser):
    """The decision options `compare` and `gate` share."""
    parser.add_argument("--max-slowdown", type=fraction, default=0.05, metavar="PCT",
                        help="minimum effect for a timing to count as changed (default 5%%)")
    parser.add_argument("--alpha", type=probability, default=0.01,
                        help="significance level of the Mann-Whitney U test on per-run medians (default 0.01)")
    parser.add_argument("--metrics", type=metric_list, default=None, metavar="M1,M2",
                        help="comma-separated metrics (default: timings in samples.csv, exact and memory figures)")
    parser.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    parser.add_argument("--dashboard-dir", type=Path, default=None,
                        help="with --format json: where to write benchmark-{smaller,bigger}-is-better.json "
                             "(default: NEW for compare, the run directory for gate)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare runs from different devices or suites (a warning instead of exit 2)")


def options_from(args) -> Options:
    return Options(alpha=args.alpha, max_slowdown=args.max_slowdown, metrics=args.metrics,
                   allow_mismatch=args.allow_mismatch)


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("base", type=Path, help="run directory (or directory of run directories) of the baseline")
    parser.add_argument("new", type=Path, help="run directory (or directory of run directories) to judge")
    add_options(parser)


def main(args) -> int:
    try:
        comparison = compare_runs(load_side(args.base), load_side(args.new), options_from(args))
    except UnusableInput as e:
        print(f"bench compare: unusable input: {e}", file=sys.stderr)
        return 2
    print(render(comparison, args.format))
    if args.format == "json":
        for path in write_dashboard(comparison, args.dashboard_dir or args.new):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if comparison.failed else 0
