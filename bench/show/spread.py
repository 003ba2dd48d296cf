"""The spread around a timing in results.csv, whichever the run has: a confidence interval
(`<metric>_ci_low`, `<metric>_ci_high`) where the harness writes one, else the 25th and 75th
percentiles of the timed repeats (`<metric>_p25`, `<metric>_p75`). Plots draw it as error bars,
the summary prints it beside the median, verdicts fall back on it without samples.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd

CI_WORDS = "confidence interval"
IQR_WORDS = "p25-p75 of the timed repeats"
# Rates are inverses of times: their spread comes from the time's, swapped.
DERIVED = {"decode_tok_s": "decode_ms_per_step", "prefill_tok_s": "prefill_ms"}


def _columns(df: pd.DataFrame, metric: str) -> tuple[str, str, str] | None:
    for low, high, words in ((f"{metric}_ci_low", f"{metric}_ci_high", CI_WORDS),
                             (f"{metric}_p25", f"{metric}_p75", IQR_WORDS)):
        if low in df and high in df and df[low].notna().any():
            return low, high, words
    return None


def bounds(df: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series, str] | None:
    """(low, high, what they are) per row, in the metric's unit; None where the run has no spread."""
    found = _columns(df, metric)
    if found:
        low, high, words = found
        return df[low].astype(float), df[high].astype(float), words
    base = DERIVED.get(metric)
    found = _columns(df, base) if base else None
    if not found:
        return None
    low, high, words = found
    # A rate is an inverse time: the longest time gives the lowest rate. Taken relative to the
    # time's median, so the bounds keep the time's relative spread around the rate's own value
    # (decode_tok_s is the total over the blocks, not the median block).
    rate, median = df[metric].astype(float), df[base].astype(float)
    return rate * median / df[high].astype(float), rate * median / df[low].astype(float), words


def words(df: pd.DataFrame, metric: str) -> str | None:
    found = bounds(df, metric)
    return found[2] if found else None


def error_bars(df: pd.DataFrame, metric: str, scale: float = 1.0) -> np.ndarray | None:
    """matplotlib's yerr: distances below and above each value (never negative)."""
    found = bounds(df, metric)
    if not found:
        return None
    low, high, _ = found
    v = df[metric].astype(float)
    below, above = (v - low).clip(lower=0) * scale, (high - v).clip(lower=0) * scale
    return np.vstack([below.fillna(0).to_numpy(), above.fillna(0).to_numpy()])
