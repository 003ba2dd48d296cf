"""Does YOCO's saving hold on this machine? Each claim checked on a run's rows: the measured
value with its interval, the expected value, and holds / does not hold / cannot tell.

Claims, per setting (preset, batch, dtype, backend, decode_mode, gen_len) that has YOCO and the
`transformer` baseline side by side (bitnet none, SWA at its most-measured window):
- the cache grows L-fold slower per token of context (the baseline caches every layer's K, V,
  YOCO one global set): the bytes are exact, so the interval is the value;
- YOCO's prefill grows linearly with the prompt (log-log slope below LINEAR_MAX), the baseline's
  faster than linearly (slope above 1: attention is quadratic);
- at the longest prompt both ran, YOCO's prefill and decode step are faster (ratio above 1).
Timing intervals: from the confidence intervals of results.csv where the run has them (several
processes per case: they hold the spread between processes), else a 95% bootstrap over the timed
repeats (samples.csv) where there are at least MIN_REPEATS per case, else the p25-p75 columns
(bench.show.spread). A claim holds
only when its whole interval is on the claimed side, does not hold when it is wholly on the other,
and cannot be told otherwise (the difference is within the noise) or without the rows it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.show import report, spread, units

HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "cannot tell"
BASELINE = "transformer"
YOCO_ARCHS = ("yoco-gret", "yoco-swa")
GROUP = ["preset", "batch", "dtype", "backend", "decode_mode", "gen_len"]
LINEAR_MAX = 1.2  # a growth exponent below this is linear (the GPU run's target uses the same)
KV_TOLERANCE = 0.01  # cache bytes are exact; 1% leaves room for a rounded head size only
MIN_REPEATS = 3  # fewer timed repeats per case give no bootstrap interval
BOOTSTRAP = 2000
CONFIDENCE = 0.95


@dataclass
class Verdict:
    claim: str  # in words
    setting: str  # the rows it rests on
    value: float
    low: float
    high: float
    unit: str  # "x" (a ratio) or "" (an exponent)
    expected: str
    verdict: str  # HOLDS, FAILS or UNKNOWN
    basis: str  # how the interval was found
    detail: str = ""

    def measured(self) -> str:
        if not math.isfinite(self.value):
            return "not measured"
        fmt = units.ratio if self.unit == "x" else (lambda v: f"{v:.2f}")
        if self.low == self.high == self.value:
            return f"{fmt(self.value)} ({self.basis})"
        return f"{fmt(self.value)} [{fmt(self.low)}, {fmt(self.high)}] ({self.basis})"

    def sentence(self) -> str:
        detail = f" {self.detail}" if self.detail else ""
        return f"**{self.verdict}**: {self.claim}: {self.measured()}; expected {self.expected}.{detail}"


def judge(low: float, high: float, above: float) -> str:
    """HOLDS when the interval lies above `above`, FAILS when at or below it, else UNKNOWN."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNKNOWN
    if low > above:
        return HOLDS
    if high <= above:
        return FAILS
    return UNKNOWN


def judge_below(low: float, high: float, below: float) -> str:
    """HOLDS when the interval lies below `below`, FAILS when at or above it, else UNKNOWN."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return UNKNOWN
    if high < below:
        return HOLDS
    if low >= below:
        return FAILS
    return UNKNOWN


# ---- timing intervals ----

class Timings:
    """Per case and metric: the median, and bootstrap replicates of it (or spread bounds)."""

    def __init__(self, rows: pd.DataFrame, samples: pd.DataFrame | None):
        self.rows = rows.set_index("case_id", drop=False)
        self.samples: dict[tuple[str, str], np.ndarray] = {}
        if samples is not None and len(samples):
            for (case, metric), g in samples.groupby(["case_id", "metric"]):
                self.samples[(case, metric)] = pd.to_numeric(g["value"], errors="coerce").dropna().to_numpy(float)
        self.rng = np.random.default_rng(0)  # the same run gives the same summary

    def has_ci(self, case_ids, metric: str) -> bool:
        """Whether these cases carry a confidence interval from several processes (--processes):
        it holds the spread between processes, which pooled samples would understate."""
        return spread.words(self.rows.loc[list(case_ids)], metric) == spread.CI_WORDS

    def replicates(self, case_id: str, metric: str) -> np.ndarray | None:
        values = self.samples.get((case_id, metric))
        if values is None or len(values) < MIN_REPEATS:
            return None
        idx = self.rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
        return np.median(values[idx], axis=1)

    def bounds(self, case_id: str, metric: str) -> tuple[float, float] | None:
        row = self.rows.loc[[case_id]]
        found = spread.bounds(row, metric)
        if not found:
            return None
        low, high = float(found[0].iloc[0]), float(found[1].iloc[0])
        return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    return float(np.percentile(replicates, tail)), float(np.percentile(replicates, 100 - tail))


BOOT_WORDS = f"{CONFIDENCE:.0%} bootstrap interval over the timed repeats"


def slope_interval(times: Timings, cases: pd.DataFrame, metric: str) -> tuple[float, float, str] | None:
    """Interval of the log-log slope of `metric` against seq_len over these cases."""
    x = np.log(cases["seq_len"].to_numpy(float))
    reps = [] if times.has_ci(cases["case_id"], metric) else [times.replicates(c, metric) for c in cases["case_id"]]
    if reps and all(r is not None for r in reps):
        y = np.log(np.vstack(reps))  # [cases, BOOTSTRAP]
        xc = x - x.mean()
        slopes = (xc[:, None] * y).sum(0) / (xc**2).sum()
        return (*_interval(slopes), BOOT_WORDS)
    bounds = [times.bounds(c, metric) for c in cases["case_id"]]
    if any(b is None or b[0] <= 0 for b in bounds):
        return None
    lo, hi = np.log([b[0] for b in bounds]), np.log([b[1] for b in bounds])
    # The slope is linear in y with weights (x - mean x): its extremes take the high end where
    # the weight is positive and the low end where it is negative, and the other way round.
    xc = x - x.mean()
    steepest = np.where(xc > 0, hi, lo)
    flattest = np.where(xc > 0, lo, hi)
    fit = lambda y: float((xc * y).sum() / (xc**2).sum())  # noqa: E731
    return fit(flattest), fit(steepest), f"extremes of the {spread.words(cases, metric)}"


def ratio_interval(times: Timings, num: str, den: str, metric: str) -> tuple[float, float, str] | None:
    """Interval of median(num) / median(den) for one metric of two cases."""
    a, b = (None, None) if times.has_ci([num, den], metric) else (times.replicates(num, metric),
                                                                    times.replicates(den, metric))
    if a is not None and b is not None:
        return (*_interval(a / b), BOOT_WORDS)
    ba, bb = times.bounds(num, metric), times.bounds(den, metric)
    if ba is None or bb is None or bb[0] <= 0:
        return None
    return ba[0] / bb[1], ba[1] / bb[0], f"extremes of the {spread.words(times.rows.loc[[num]], metric)}"


# ---- the claims ----

def _setting(key: tuple) -> str:
    d = dict(zip(GROUP, key, strict=True))
    return (f"preset {d['preset']}, batch {d['batch']}, {d['dtype']}, backend {d['backend']}, "
            f"decode {d['decode_mode']}, "
            f"{d['gen_len']} decode steps")


def _n_layers(preset: str) -> int | None:
    from yoco.config import PRESETS

    return PRESETS.get(preset, {}).get("n_layers")


def kv_growth(rows: pd.DataFrame) -> tuple[float, str]:
    """Bytes the cache grows by per token of context, and from what: the measured allocations of
    the two longest prompts (where a window's ring is full at both), else the formula's column."""
    rows = rows.sort_values("seq_len")
    tokens = rows["seq_len"] + rows["gen_len"]
    window = rows["window"].astype(float) if "window" in rows else pd.Series(math.nan, index=rows.index)
    full = rows[(window.isna()) | (tokens >= window)]
    if full["seq_len"].nunique() >= 2:
        a, b = full.iloc[-2], full.iloc[-1]
        ta, tb = a["seq_len"] + a["gen_len"], b["seq_len"] + b["gen_len"]
        return (float(b["kv_cache_bytes"]) - float(a["kv_cache_bytes"])) / (tb - ta), \
            f"measured between {units.sig(ta)} and {units.sig(tb)} tokens"
    return float(rows["kv_cache_bytes_per_token"].iloc[-1]), "the cache's formula"


def _kv_claim(setting: str, preset: str, base: pd.DataFrame, yoco: pd.DataFrame, arch: str) -> Verdict:
    layers = _n_layers(preset)
    gb, how_b = kv_growth(base)
    gy, how_y = kv_growth(yoco)
    value = gb / gy if gy > 0 else math.nan
    expected = f"{layers}x (L = {layers} layers: the baseline caches every layer, YOCO one)" if layers else "L-fold"
    verdict = UNKNOWN
    if layers and math.isfinite(value):
        verdict = HOLDS if abs(value / layers - 1) <= KV_TOLERANCE else FAILS
    return Verdict(f"KV cache growth per token, {BASELINE} / {arch}", setting, value, value, value, "x", expected,
                   verdict, "exact bytes",
                   f"Per token the baseline's cache grows by {units.size(gb)} ({how_b}), {arch}'s by "
                   f"{units.size(gy)} ({how_y}).")


def _longer_half(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.sort_values("seq_len").drop_duplicates("seq_len", keep="last")
    return rows[rows["seq_len"] >= rows["seq_len"].median()] if len(rows) > 2 else rows


def _growth_claim(setting: str, times: Timings, rows: pd.DataFrame, arch: str) -> Verdict:
    fit = _longer_half(rows)
    span = f"{units.sig(fit['seq_len'].min())}-{units.sig(fit['seq_len'].max())} tokens"
    if arch == BASELINE:
        claim = f"prefill growth exponent of {arch} over {span}"
        expected = "above 1 (attention is quadratic in the prompt: towards 2 at long prompts)"
        threshold, above = 1.0, True
    else:
        claim = f"prefill growth exponent of {arch} over {span}"
        expected = f"about 1 (linear in the prompt; holds below {LINEAR_MAX})"
        threshold, above = LINEAR_MAX, False
    if fit["seq_len"].nunique() < 2:
        return Verdict(claim, setting, math.nan, math.nan, math.nan, "", expected, UNKNOWN, "",
                       "Fewer than two prompt lengths: no slope.")
    x, y = np.log(fit["seq_len"].to_numpy(float)), np.log(fit["prefill_ms"].to_numpy(float))
    value = float(np.polyfit(x, y, 1)[0])
    found = slope_interval(times, fit, "prefill_ms")
    if found is None:
        return Verdict(claim, setting, value, value, value, "", expected, UNKNOWN, "no spread",
                       f"No interval: fewer than {MIN_REPEATS} timed repeats and no spread columns.")
    low, high, basis = found
    verdict = judge(low, high, threshold) if above else judge_below(low, high, threshold)
    return Verdict(claim, setting, value, low, high, "", expected, verdict, basis,
                   "Prefill time grows as seq_len to this power (log-log slope, longer half of the prompts).")


PAPER = {"prefill_ms": "paper, 3B on an H100: 2.87x at 32K tokens, 71.8x at 1M",
         "decode_ms_per_step": "paper, 3B on an H100: 9.6x the throughput at 512K tokens"}
WHAT = {"prefill_ms": "prefill speed-up", "decode_ms_per_step": "decode speed-up (time per step)"}


def _ratio_claim(setting: str, times: Timings, base: pd.DataFrame, yoco: pd.DataFrame, arch: str,
                 metric: str) -> Verdict | None:
    common = sorted(set(base["seq_len"]) & set(yoco["seq_len"]))
    if not common:
        return None
    n = common[-1]
    b = base[base["seq_len"] == n].iloc[-1]
    y = yoco[yoco["seq_len"] == n].iloc[-1]
    claim = f"{WHAT[metric]} of {arch} over {BASELINE} at the longest prompt, {units.sig(n)} tokens"
    expected = f"above 1 (YOCO faster; the gain grows with the context: {PAPER[metric]})"
    value = float(b[metric]) / float(y[metric])
    fmt = units.ms
    detail = f"{BASELINE} {fmt(float(b[metric]))}, {arch} {fmt(float(y[metric]))} (medians)."
    found = ratio_interval(times, b["case_id"], y["case_id"], metric)
    if found is None:
        return Verdict(claim, setting, value, value, value, "x", expected, UNKNOWN, "no spread",
                       detail + f" No interval: fewer than {MIN_REPEATS} timed repeats and no spread columns.")
    low, high, basis = found
    verdict = judge(low, high, 1.0)
    if verdict == UNKNOWN:
        detail += " The interval contains 1: the difference is within the noise."
    return Verdict(claim, setting, value, low, high, "x", expected, verdict, basis, detail)


def verdicts(df: pd.DataFrame, samples: pd.DataFrame | None = None) -> list[Verdict]:
    """Every claim the rows allow, computed from them (never assumed)."""
    rows = report.main_slice(df)
    if rows.empty:
        return []
    times = Timings(rows, samples)
    out: list[Verdict] = []
    for key, group in rows.groupby(GROUP, sort=False, dropna=False):
        setting = _setting(key if isinstance(key, tuple) else (key,))
        base = group[group["arch"] == BASELINE]
        archs = [a for a in YOCO_ARCHS if (group["arch"] == a).any()]
        if not archs:
            continue
        if base.empty:
            out.append(Verdict(f"YOCO against {BASELINE}", setting, math.nan, math.nan, math.nan, "",
                               f"{BASELINE} rows beside YOCO's", UNKNOWN, "",
                               f"No {BASELINE} case finished in this setting: nothing to compare with."))
            continue
        for arch in archs:
            out.append(_kv_claim(setting, key[0], base, group[group["arch"] == arch], arch))
        for arch in [*archs, BASELINE]:
            out.append(_growth_claim(setting, times, group[group["arch"] == arch], arch))
        for metric in ("prefill_ms", "decode_ms_per_step"):
            for arch in archs:
                v = _ratio_claim(setting, times, base, group[group["arch"] == arch], arch, metric)
                if v:
                    out.append(v)
    return out


def markdown(found: list[Verdict]) -> str:
    """A bullet per claim, grouped by setting."""
    if not found:
        return "No verdicts: no YOCO case finished."
    lines, setting = [], None
    for v in found:
        if v.setting != setting:
            setting = v.setting
            lines += ["", f"*{setting}*:", ""] if lines else [f"*{setting}*:", ""]
        lines.append(f"- {v.sentence()}")
    return "\n".join(lines)
