"""Judge two sets of runs (BASE, NEW): regressed, improved or unchanged, per case and metric.

`python -m bench compare BASE NEW` only reads files. BASE and NEW are run directories written by
`python -m bench run` (results.csv, samples.csv, env.json), or directories holding several of
them (one per process run, as `gate` writes). Per metric kind:
- timing: one median per run of samples.csv's TIMING_SOURCE column, all timings judged together
  by bench.judge.stats (one-sided Mann-Whitney per timing, Holm over them all, the Hodges-Lehmann
  ratio with its interval, the bar from BASE's spread or a stored A/A calibration). With too few
  runs for that test, the repeats inside the runs are used instead, and the verdicts are only
  `likely regressed`, `likely improved` or `inconclusive`;
- exact (kv_cache_bytes, weight_bytes, params): must match exactly;
- memory (peak bytes): the model's own share, peak minus mem_before_model_bytes (the process's
  Python and torch taken out), must stay within MEMORY_TOLERANCE of BASE's share + MEMORY_SLACK_BYTES.
A case of BASE that is missing or failed in any NEW run is `missing`; one only in NEW is `new`.

Exit status: 1 if a verdict fails (regressed, missing, and likely regressed unless
--no-fail-likely), else 0 (the closing line says OK, or INCONCLUSIVE when timings could not be
decided); 2 for unusable input (one message, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import textwrap
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
MEMORY_BEFORE = "mem_before_model_bytes"  # subtracted from the peaks: the model's own share
MEMORY_TOLERANCE = 0.02  # of BASE's share ...
MEMORY_SLACK_BYTES = 256 << 10  # ... plus 256 KiB (page and allocator granularity)
# Which samples.csv column the timings are judged on: "raw" (`value`, the measured time) or
# "normalized" (`normalized`, over a calibration workload timed in the same process). Normalized:
# on the idle 2-core machine, 10 A/A runs of the smoke suite (scripts/aa_spread.py, results/
# reference/aa-spread-cpu) gave it a narrower between-run spread in 9 of 12 case-metric pairs, the
# median relative IQR 0.72x raw's (decode 0.063 against 0.086, prefill 0.076 against 0.108).
TIMING_SOURCE = "normalized"
TIMING_SOURCES = {"raw": "value", "normalized": "normalized"}
STATUS_ORDER = ("regressed", "missing", "likely regressed", "improved", "likely improved", "new", "inconclusive",
                "unchanged")
QUIET = ("unchanged", "inconclusive")  # shown only with --all (or as a count per case)
SAMPLES_COLUMNS = ("case_id", "metric", "value")
RESULTS_COLUMNS = ("case_id", "status")
ENV_KEYS = ("suite", "device")
WIDTH = 120


class UnusableInput(Exception):
    """Input the comparison cannot trust: main prints the message and exits 2."""


@dataclass
class Run:
    """One `python -m bench run` output directory."""

    path: Path
    env: dict
    results: pd.DataFrame  # indexed by case_id
    samples: pd.DataFrame
    _groups: dict = field(default_factory=dict, repr=False)

    def timing(self, case_id: str, metric: str, column: str) -> list[np.ndarray]:
        """The finite samples of one case's timing in this run, one array per process: a run made
        with `--processes N` (a `process` column) holds N process runs."""
        if column not in self._groups:
            finite = self.samples[np.isfinite(self.samples[column].to_numpy(dtype=np.float64))]
            by = ["case_id", "metric"] + (["process"] if "process" in finite else [])
            groups: dict = {}
            for key, group in finite.groupby(by, sort=False):
                groups.setdefault(tuple(key[:2]), []).append(group[column].to_numpy(dtype=np.float64))
            self._groups[column] = groups
        return self._groups[column].get((case_id, metric), [])


@dataclass
class Row:
    case_id: str
    metric: str
    status: str
    base: float = math.nan  # timings: median of the per-run medians (raw, in unit); memory: the model's share
    new: float = math.nan
    ratio: float = math.nan  # timings: Hodges-Lehmann estimate of new / base; others: new / base
    ratio_low: float = math.nan  # timings: the estimate's stats.CONFIDENCE interval
    ratio_high: float = math.nan
    p: float = math.nan  # timings: Holm-adjusted one-sided p
    threshold: float = math.nan  # the relative move that had to be exceeded
    unit: str = ""
    runs: str = ""  # "n_base/n_new" values behind a timing
    basis: str = ""  # timings: "runs" (one median per run) or "repeats" (too few runs)
    note: str = ""


@dataclass
class Options:
    alpha: float = 0.01
    max_slowdown: float = 0.05
    noise_factor: float = stats.NOISE_FACTOR
    metrics: tuple[str, ...] | None = None  # None: timings in samples.csv + exact + memory
    allow_mismatch: bool = False
    timing_source: str = TIMING_SOURCE
    fail_likely: bool = True  # a `likely regressed` timing fails
    noise: dict[str, float] | None = None  # "case_id/metric" -> stored A/A spread, replaces BASE's
    family_size: int | None = None  # the gate's confirmation: how many timings the first pass tested
    cases: tuple[str, ...] | None = None  # judge only these cases
    timings: tuple[tuple[str, str], ...] | None = None  # ... and of their timings only these (case, metric)


@dataclass
class Comparison:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    fail_likely: bool = True
    runs_needed: int = 0  # > 0: some timings had too few runs; this many a side would decide them
    timing_source: str = TIMING_SOURCE
    evidence: dict[tuple[str, str], stats.Evidence] = field(default_factory=dict)  # per (case, timing)

    @property
    def failing(self) -> tuple[str, ...]:
        return ("regressed", "missing", "likely regressed") if self.fail_likely else ("regressed", "missing")

    @property
    def failed(self) -> bool:
        return any(r.status in self.failing for r in self.rows)

    @property
    def inconclusive(self) -> bool:
        return any(r.basis == "repeats" for r in self.rows)

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
    for column in TIMING_SOURCES.values():
        if column not in samples:
            continue
        values = pd.to_numeric(samples[column], errors="coerce")
        garbage = values.isna()
        if garbage.any():
            garbage &= ~samples[column].str.strip().str.lower().isin(["", "nan"])
        if garbage.any():
            bad = samples[column][garbage].iloc[0]
            raise UnusableInput(f"{path / 'samples.csv'}: {column} {bad!r} is not a number")
        if (values <= 0).any():
            bad = values[values <= 0].iloc[0]
            raise UnusableInput(f"{path / 'samples.csv'}: {column} {bad!r} is not a positive time")
        samples[column] = values
    for column in [*METRICS, MEMORY_BEFORE]:
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


def load_noise(path: Path, timing_source: str = TIMING_SOURCE) -> dict[str, float]:
    """A stored A/A calibration (scripts/gate_noise.py --write): {"source": "raw", "spread":
    {"CASE/METRIC": relative spread between runs}}, measured on the timings judged."""
    try:
        data = json.loads(Path(path).read_text())
        spread = {str(k): float(v) for k, v in data["spread"].items()}
        source = data.get("source", timing_source)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UnusableInput(f"{path}: not an A/A calibration ({type(e).__name__}: {e}); expected "
                            f'{{"spread": {{"CASE_ID/METRIC": relative spread}}}} from scripts/gate_noise.py') from None
    if source != timing_source:
        raise UnusableInput(f"{path}: measured on {source} timings, but timings are judged {timing_source} "
                            f"(--timing-source)")
    bad = [k for k, v in spread.items() if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise UnusableInput(f"{path}: spread of {bad[0]} is {spread[bad[0]]}: must be a number >= 0")
    return spread


# ---- comparing ----

def compare_runs(base: list[Run], new: list[Run], options: Options | None = None) -> Comparison:
    options = options or Options()
    if options.timing_source not in TIMING_SOURCES:
        raise UnusableInput(f"timing source {options.timing_source!r}: allowed {', '.join(TIMING_SOURCES)}")
    notes = check_same_setup(base, new, options.allow_mismatch)
    metrics = options.metrics or default_metrics(base + new)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UnusableInput(f"unknown metric {unknown[0]!r}: valid metrics are {', '.join(METRICS)}")
    base_ok, new_ok = ok_cases(base), ok_cases(new)
    case_ids = list(base_ok) + [c for c in new_ok if c not in base_ok]
    if options.cases is not None:
        case_ids = [c for c in case_ids if c in options.cases]
    rows, timings = [], []
    for case_id in case_ids:
        lost = lost_in(new, case_id)
        if case_id not in base_ok:
            rows.append(Row(case_id, "-", "new", note="only in NEW" + (f"; {lost}" if lost else "")))
            continue
        if lost:
            rows.append(Row(case_id, "-", "missing", note=f"coverage lost: {lost}"))
            continue
        for metric in metrics:
            if METRICS[metric].kind == "timing":
                if options.timings is not None and (case_id, metric) not in options.timings:
                    continue
                row, values = gather_timing(case_id, metric, base_ok[case_id], new_ok[case_id], options)
                if values is not None:
                    timings.append((row, *values))
            else:
                row = compare_fixed(case_id, metric, base_ok[case_id], new_ok[case_id])
            if row is not None:
                rows.append(row)
        if len(base_ok[case_id]) < len(base):
            notes.append(f"note: {case_id} failed or is absent in {len(base) - len(base_ok[case_id])} of "
                         f"{len(base)} BASE runs: judged on the others")
    comparison = Comparison(rows, notes, options.fail_likely, timing_source=options.timing_source)
    decide_timings(timings, options, comparison)
    if comparison.runs_needed:
        notes.append(f"note: too few runs for the per-run test (it needs {comparison.runs_needed} a side for "
                     f"{options.family_size or len(timings)} timing(s) at alpha {options.alpha:g}): those timings "
                     f"are judged on the repeats inside the runs, which share each process's luck, so only a "
                     f"move beyond {max(stats.FALLBACK_MIN_EFFECT, options.max_slowdown):.0%} counts, and only "
                     f"as likely")
    return comparison


def lost_in(runs: list[Run], case_id: str) -> str:
    """Why case_id is not ok in every one of these (NEW) runs, or "" if it is."""
    failed, absent = [], 0
    for run in runs:
        if case_id not in run.results.index:
            absent += 1
            continue
        row = run.results.loc[case_id]
        if str(row["status"]).strip().lower() != "ok":
            error = str(row.get("error", "") or "").strip()
            failed.append(f"{row['status']}" + (f": {error[:120]}" if error else ""))
    if not failed and not absent:
        return ""
    n = f" of {len(runs)}" if len(runs) > 1 else ""
    parts = []
    if failed:
        parts.append(f"{failed[0].split(':')[0]} in {len(failed)}{n} NEW run(s)"
                     + (f": {failed[0].partition(': ')[2]}" if ": " in failed[0] else ""))
    if absent:
        parts.append(f"absent from {absent}{n} NEW run(s)")
    return "; ".join(parts)


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


def compare_fixed(case_id: str, metric: str, base: list[Run], new: list[Run]) -> Row | None:
    """An exact or a memory figure: one value per run, no statistics."""
    spec = METRICS[metric]
    memory = spec.kind == "memory"
    share = memory and all(MEMORY_BEFORE in r.results.columns for r in base + new)
    base_values = result_values(base, case_id, metric, share)
    new_values = result_values(new, case_id, metric, share)
    if not base_values and not new_values:
        return None  # not measured on this device (e.g. no allocator figures)
    if not new_values:
        return Row(case_id, metric, "missing", unit=spec.unit, note="measured in BASE, not in NEW")
    if not base_values:
        return Row(case_id, metric, "new", new=float(np.median(new_values)), unit=spec.unit,
                   note="not measured in BASE")
    b, n = float(np.median(base_values)), float(np.median(new_values))
    row = Row(case_id, metric, "unchanged", b, n, n / b if b else math.nan, unit=spec.unit)
    if not memory:
        varies = [side for side, v in (("BASE", base_values), ("NEW", new_values)) if len(set(v)) > 1]
        if varies:
            row.note = f"varies between runs in {' and '.join(varies)}"
        if set(base_values) != set(new_values):
            row.status = "regressed"
            row.note = "must match exactly" + (f"; {row.note}" if row.note else "")
        return row
    slack = MEMORY_TOLERANCE * abs(b) + MEMORY_SLACK_BYTES
    row.threshold = slack / b if b > 0 else math.nan
    if not share:
        row.note = f"whole-process peak: {MEMORY_BEFORE} is not in every run"
    worse = n - b if spec.lower_is_better else b - n
    if worse > slack:
        row.status = "regressed"
        row.note = (f"beyond {MEMORY_TOLERANCE:.0%} + {human(MEMORY_SLACK_BYTES, 'bytes')}"
                    + (f"; {row.note}" if row.note else ""))
    elif -worse > slack:
        row.status = "improved"
    return row


def result_values(runs: list[Run], case_id: str, metric: str, share: bool = False) -> list[float]:
    """One value per run; share: minus that run's mem_before_model_bytes (NaN counts as 0)."""
    values = []
    for run in runs:
        if metric not in run.results.columns:
            continue
        value = run.results.at[case_id, metric]
        if pd.isna(value):
            continue
        before = run.results.at[case_id, MEMORY_BEFORE] if share else 0.0
        values.append(float(value) - (0.0 if pd.isna(before) else float(before)))
    return values


def gather_timing(case_id: str, metric: str, base: list[Run], new: list[Run],
                  options: Options) -> tuple[Row | None, tuple | None]:
    """A timing's row and its (BASE, NEW) per-run samples; the row's status stays "pending" until
    decide_timings judges all timings together."""
    spec = METRICS[metric]
    column = TIMING_SOURCES[options.timing_source]
    base_runs = per_run_values(base, case_id, metric, column)
    new_runs = per_run_values(new, case_id, metric, column)
    if not base_runs and not new_runs:
        return None, None
    if not new_runs:
        return Row(case_id, metric, "missing", unit=spec.unit, note="timed in BASE, not in NEW"), None
    if not base_runs:
        raw = [v for run in per_run_values(new, case_id, metric, "value") for v in run]
        return Row(case_id, metric, "new", new=float(np.median(raw)), unit=spec.unit, note="not timed in BASE"), None
    shown = (base_runs, new_runs)
    if column != "value":  # shown in ms whatever is judged
        shown = (per_run_values(base, case_id, metric, "value"), per_run_values(new, case_id, metric, "value"))
    row = Row(case_id, metric, "pending", float(np.median([np.median(v) for v in shown[0]])),
              float(np.median([np.median(v) for v in shown[1]])), unit=spec.unit)
    return row, (base_runs, new_runs)


def per_run_values(runs: list[Run], case_id: str, metric: str, column: str) -> list[np.ndarray]:
    """Each process run's finite samples of one timing, runs without any left out."""
    values = []
    for run in runs:
        if column not in run.samples:
            raise UnusableInput(f"{run.path / 'samples.csv'}: no {column!r} column to judge timings on "
                                f"(timing source {'normalized' if column == 'normalized' else 'raw'})")
        values += run.timing(case_id, metric, column)
    return values


def decide_timings(timings: list[tuple[Row, list, list]], options: Options, comparison: Comparison):
    """Judge the pending timings together (one Holm family): per-run medians where there are enough
    runs for the test, else every repeat (comparison.runs_needed says how many runs would do)."""
    if not timings:
        return
    family = options.family_size or len(timings)
    evidences = []
    for row, base_runs, new_runs in timings:
        spec = METRICS[row.metric]
        if stats.can_decide(len(base_runs), len(new_runs), options.alpha, family):
            noise = (options.noise or {}).get(f"{row.case_id}/{row.metric}")
            e = stats.evidence([np.median(v) for v in base_runs], [np.median(v) for v in new_runs],
                               lower_is_better=spec.lower_is_better, noise=noise)
        else:
            comparison.runs_needed = stats.runs_needed(options.alpha, family)
            e = stats.evidence(np.concatenate(base_runs), np.concatenate(new_runs),
                               lower_is_better=spec.lower_is_better, basis="repeats")
        evidences.append(e)
    decisions = stats.decide_all(evidences, alpha=options.alpha, min_effect=options.max_slowdown,
                                 noise_factor=options.noise_factor, family_size=family)
    for (row, _, _), d in zip(timings, decisions):
        e = d.evidence
        row.status, row.ratio, row.ratio_low, row.ratio_high = d.status, e.ratio, e.ratio_low, e.ratio_high
        row.p, row.threshold, row.basis, row.runs = d.p, d.threshold, e.basis, f"{e.n_base}/{e.n_new}"
        comparison.evidence[(row.case_id, row.metric)] = e


def confirmation_targets(first: Comparison, options: Options) -> list[tuple[str, str]]:
    """The (case, timing) pairs of a first pass worth more runs before their verdict: any that
    leans worse (stats.worth_confirming), which includes every one called regressed."""
    return [key for key, e in first.evidence.items() if stats.worth_confirming(e, options.max_slowdown)]


def merge_confirmation(first: Comparison, pooled: Comparison, confirmed: list[tuple[str, str]]) -> Comparison:
    """The first pass with each re-run timing replaced by its verdict on all its runs; a re-run
    case that failed or went missing in the confirmation is `missing`."""
    by_key = {(r.case_id, r.metric): r for r in pooled.rows}
    lost = {r.case_id: r for r in pooled.rows if r.status == "missing" and r.metric == "-"}
    rows = []
    for row in first.rows:
        key = (row.case_id, row.metric)
        if key in confirmed and row.case_id not in lost and key in by_key:
            row = by_key[key]
            row.note = "decided on the first and the confirmation runs" + (f"; {row.note}" if row.note else "")
        elif key in confirmed and row.case_id in lost:
            continue  # replaced by the case's `missing` row
        rows.append(row)
    for row in lost.values():
        row.note = f"lost in the confirmation runs: {row.note.removeprefix('coverage lost: ')}"
        rows.append(row)
    evidence = {**first.evidence, **{k: e for k, e in pooled.evidence.items() if k in confirmed}}
    return Comparison(rows, first.notes + [n for n in pooled.notes if n not in first.notes], first.fail_likely,
                      max(first.runs_needed, pooled.runs_needed), first.timing_source, evidence)


# ---- showing ----

def human(value: float, unit: str, signed: bool = False) -> str:
    """A value in its unit, read at a glance: 13.2 MiB, 4.68 ms, 233 tok/s, 1,000,000."""
    if value is None or not math.isfinite(value):
        return "-"
    sign = "+" if signed and value > 0 else ("-" if value < 0 else "")
    v = abs(value)
    if unit == "bytes":
        for name in ("B", "KiB", "MiB", "GiB", "TiB"):
            if v < 1024 or name == "TiB":
                return f"{sign}{v:.0f} {name}" if name == "B" else f"{sign}{_digits(v)} {name}"
            v /= 1024
    if unit == "ms":
        return f"{sign}{_digits(v / 1e3)} s" if v >= 1e3 else f"{sign}{_digits(v)} ms"
    if unit == "fraction":
        return f"{sign}{_digits(v * 100)}%"
    if unit == "count":
        return f"{sign}{v:,.0f}"
    return f"{sign}{_digits(v)}" + (f" {unit}" if unit else "")


def _digits(v: float) -> str:
    """Three significant digits without exponents: 0.00123, 4.68, 23.7, 233, 1,234."""
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    if v == 0:
        return "0"
    return f"{v:.3g}" if v >= 1e-4 else f"{v:.1e}"


def change(row: Row) -> str:
    """The move from BASE to NEW: a ratio with its interval (timings), or a difference."""
    kind = METRICS[row.metric].kind if row.metric in METRICS else ""
    if kind == "timing" and math.isfinite(row.ratio):
        bounds = (f" [{row.ratio_low:.3g}, {row.ratio_high:.3g}]"
                  if math.isfinite(row.ratio_low) and math.isfinite(row.ratio_high) else " [no CI]")
        return f"x{row.ratio:.3g}{bounds}"
    if kind in ("exact", "memory") and math.isfinite(row.base) and math.isfinite(row.new):
        difference = row.new - row.base
        if difference == 0:
            return "same"
        text = human(difference, row.unit, signed=True)
        return text + (f" ({difference / row.base:+.1%})" if kind == "memory" and row.base > 0 else "")
    return ""


def metric_label(metric: str) -> str:
    return f"{metric}*" if metric in METRICS and METRICS[metric].kind == "memory" else metric


def grouped(comparison: Comparison, show_all: bool) -> list[tuple[str, list[Row], dict[str, int]]]:
    """Per case, worst case first: the rows to show and the counts of those left quiet."""
    rank = {s: i for i, s in enumerate(STATUS_ORDER)}
    cases: dict[str, list[Row]] = {}
    for row in comparison.rows:
        cases.setdefault(row.case_id, []).append(row)
    out = []
    for case_id, rows in sorted(cases.items(), key=lambda item: min(rank[r.status] for r in item[1])):
        rows = sorted(rows, key=lambda r: rank[r.status])
        shown = rows if show_all else [r for r in rows if r.status not in QUIET]
        quiet = {} if show_all else {s: n for s in QUIET if (n := sum(r.status == s for r in rows))}
        out.append((case_id, shown, quiet))
    return out


def _quiet_words(quiet: dict[str, int]) -> str:
    return ", ".join(f"{n} {s}" for s, n in quiet.items())


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _line(row: Row) -> str:
    p = f"p {row.p:.2g}" if math.isfinite(row.p) else ""
    runs = f"{row.basis} {row.runs}" if row.basis else ""
    base, new = human(row.base, row.unit), human(row.new, row.unit)
    text = f"  {metric_label(row.metric):<23} {row.status:<16} {base:>10} {new:>10}  {change(row):<22} {p:<9} {runs}"
    return _fit(text.rstrip(), WIDTH)


def render_table(comparison: Comparison, show_all: bool = False) -> str:
    lines = []
    groups = grouped(comparison, show_all)
    pad = min(max([len(c) for c, shown, _ in groups if not shown], default=0), WIDTH - 40)
    for case_id, shown, quiet in groups:
        if not shown:
            lines.append(_fit(f"{case_id:<{pad}}  {_quiet_words(quiet)}", WIDTH))
            continue
        lines.append(_fit(case_id + (f"  (and {_quiet_words(quiet)})" if quiet else ""), WIDTH))
        for row in shown:
            if row.metric == "-":  # the whole case
                lines.extend(textwrap.wrap(f"{row.status}: {row.note}", WIDTH, initial_indent="  ",
                                           subsequent_indent="      "))
                continue
            lines.append(_line(row))
            if row.note:
                lines.extend(textwrap.wrap(row.note, WIDTH, initial_indent="      ", subsequent_indent="      "))
    if not lines:
        lines.append("(nothing to compare)")
    lines.extend(legend(comparison, show_all))
    for note in comparison.notes:
        lines.extend(textwrap.wrap(note, WIDTH, subsequent_indent="  "))
    lines.append(summary_line(comparison))
    return "\n".join(lines)


def legend(comparison: Comparison, show_all: bool) -> list[str]:
    shown = [r for _, rows, _ in grouped(comparison, show_all) for r in rows]
    words = []
    if any(METRICS.get(r.metric, Metric("", True, "")).kind == "timing" for r in shown):
        source = "raw times" if comparison.timing_source == "raw" else "normalized"
        words.append(f"timings: median of per-run medians ({source}); x = Hodges-Lehmann ratio NEW/BASE "
                     f"[{stats.CONFIDENCE:.0%} interval]; p = one-sided, Holm-adjusted over all timings")
    if any(METRICS.get(r.metric, Metric("", True, "")).kind == "memory" for r in shown):
        words.append(f"* the model's share: peak minus {MEMORY_BEFORE}; fails beyond {MEMORY_TOLERANCE:.0%} of "
                     f"BASE's share + {human(MEMORY_SLACK_BYTES, 'bytes')}")
    return [line for w in words for line in textwrap.wrap(w, WIDTH, subsequent_indent="  ")]


def summary_line(comparison: Comparison) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in comparison.counts().items()) or "nothing to compare"
    if comparison.failed:
        likely_only = not any(r.status in ("regressed", "missing") for r in comparison.rows)
        return f"FAIL: {'likely regression' if likely_only else 'regression'} ({counts})"
    if comparison.inconclusive:
        return (f"INCONCLUSIVE: too few runs to decide timings; {comparison.runs_needed} runs a side would "
                f"decide ({counts})")
    return f"OK: no regression ({counts})"


def render(comparison: Comparison, fmt: str, show_all: bool = False) -> str:
    if fmt == "json":
        return json.dumps({"failed": comparison.failed, "inconclusive": comparison.inconclusive,
                           "runs_needed": comparison.runs_needed or None, "counts": comparison.counts(),
                           "notes": comparison.notes, "rows": [_json_row(r) for r in comparison.rows]}, indent=2)
    if fmt == "markdown":
        return render_markdown(comparison, show_all)
    return render_table(comparison, show_all)


def render_markdown(comparison: Comparison, show_all: bool = False) -> str:
    cells = [["case", "metric", "status", "base", "new", "change", "p", "runs", "note"]]
    for case_id, shown, quiet in grouped(comparison, show_all):
        if not shown:
            cells.append([case_id, "(all)", _quiet_words(quiet), "", "", "", "", "", ""])
        for row in shown:
            cells.append([row.case_id, metric_label(row.metric), row.status, human(row.base, row.unit),
                          human(row.new, row.unit), change(row), f"{row.p:.2g}" if math.isfinite(row.p) else "",
                          f"{row.basis} {row.runs}".strip(), row.note])
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells]
    lines.insert(1, "|" + "---|" * len(cells[0]))
    body = "\n".join(lines) if len(cells) > 1 else "_no rows_"
    extra = "".join(f"\n> {n}" for n in legend(comparison, show_all) + comparison.notes)
    return f"{body}\n\n**{summary_line(comparison)}**{extra}\n"


def _json_row(row: Row) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(row).items()}


def dashboard_entries(comparison: Comparison) -> dict[str, list[dict]]:
    """github-action-benchmark's customSmallerIsBetter / customBiggerIsBetter lists, NEW's values."""
    entries: dict[str, list[dict]] = {"smaller": [], "bigger": []}
    for row in comparison.rows:
        if row.metric not in METRICS or not math.isfinite(row.new):
            continue
        extra = f"status={row.status} base={row.base:.6g} ratio={row.ratio:.4g} p={row.p:.2g}"
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
                        help="smallest move of a timing that counts as a change (default 5%%); the bar is the "
                             f"larger of this and {stats.NOISE_FACTOR:g} x BASE's spread between runs")
    parser.add_argument("--alpha", type=probability, default=0.01,
                        help="family-wise false-alarm rate over all timings compared: one-sided Mann-Whitney "
                             "on per-run medians, Holm-corrected (default 0.01)")
    parser.add_argument("--metrics", type=metric_list, default=None, metavar="M1,M2",
                        help="comma-separated metrics (default: timings in samples.csv, exact and memory figures)")
    parser.add_argument("--timing-source", choices=tuple(TIMING_SOURCES), default=TIMING_SOURCE,
                        help=f"judge timings on samples.csv's raw times or on the times over their calibration "
                             f"(default {TIMING_SOURCE}; scripts/gate_noise.py measures which is steadier)")
    parser.add_argument("--noise-file", type=Path, default=None, metavar="JSON",
                        help="a stored A/A calibration (scripts/gate_noise.py --write): its between-run "
                             "spread per timing replaces BASE's in the bar")
    parser.add_argument("--no-fail-likely", dest="fail_likely", action="store_false",
                        help="with too few runs, a `likely regressed` timing does not fail (by default it exits 1)")
    parser.add_argument("--all", dest="show_all", action="store_true",
                        help="show every case and metric (default: only what changed, failed or is likely; "
                             "one line for each case where nothing did)")
    parser.add_argument("--format", choices=("table", "json", "markdown"), default="table",
                        help="table: for a terminal, 120 columns; markdown: for a CI job summary; json: every "
                             "row with raw numbers, and the dashboard files (default table)")
    parser.add_argument("--dashboard-dir", type=Path, default=None,
                        help="with --format json: where to write benchmark-{smaller,bigger}-is-better.json "
                             "(default: NEW for compare, the run directory for gate)")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="compare runs from different devices or suites (a warning instead of exit 2)")


def options_from(args) -> Options:
    noise = load_noise(args.noise_file, args.timing_source) if getattr(args, "noise_file", None) else None
    return Options(alpha=args.alpha, max_slowdown=args.max_slowdown, metrics=args.metrics,
                   allow_mismatch=args.allow_mismatch, timing_source=args.timing_source,
                   fail_likely=args.fail_likely, noise=noise)


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
    print(render(comparison, args.format, args.show_all))
    if args.format == "json":
        for path in write_dashboard(comparison, args.dashboard_dir or args.new):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if comparison.failed else 0
