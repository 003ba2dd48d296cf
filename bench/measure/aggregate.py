"""One results row from a case measured in N separate processes (`python -m bench run
--processes N`).

Repeats inside one process share its luck (clock state, memory layout, a neighbour's load), so
their quartiles understate how much a figure moves between runs. With N processes per case the
row's timing is the median of the N per-process medians, with a 95% confidence interval for
that median that assumes only independent processes (asv's `quantile_ci`: order statistics
and the binomial distribution). Such an interval exists only from 6 processes on (with 5 the
widest, min to max, covers the median with probability 1 - 2/2^5 = 94%); below that its
columns are NaN. Quartiles come from all the processes' samples pooled.
"""

from __future__ import annotations

import math
from math import comb

import numpy as np

from bench.measure.phases import timing_columns

CONFIDENCE = 0.95
# results.csv columns that get <name>_ci_low and <name>_ci_high
CI_METRICS = ("prefill_ms", "prefill_tok_s", "decode_ms_per_step", "decode_tok_s")
PEAK_COLUMNS = ("peak_mem_prefill_bytes", "peak_mem_prefill_reserved_bytes", "peak_mem_prefill_nvml_bytes",
                "peak_mem_decode_bytes", "peak_mem_decode_reserved_bytes", "peak_mem_decode_nvml_bytes")


def median_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of independent values: the
    narrowest symmetric pair of order statistics (x_(k), x_(n+1-k)) whose coverage,
    1 - 2 P(Binomial(n, 1/2) <= k - 1), is at least `confidence`. (nan, nan) where even
    (min, max) falls short (fewer than 6 values at 95%)."""
    x = np.sort(np.asarray([v for v in values if v == v], dtype=float))
    n = len(x)
    best = None
    for k in range(1, n // 2 + 1):
        tail = sum(comb(n, i) for i in range(k)) / 2**n
        if 1 - 2 * tail >= confidence:
            best = k
        else:
            break
    if best is None:
        return math.nan, math.nan
    return float(x[best - 1]), float(x[n - best])


def combine(rows: list[dict], samples: list[list[dict]], batch: int, seq_len: int) -> dict:
    """The case's results row from its per-process rows (in process order) and samples."""
    ok = [i for i, r in enumerate(rows) if r.get("status") == "ok"]
    if not ok:
        return {**rows[0], "processes": 0}
    first = rows[ok[0]]
    out = dict(first)
    pooled = {m: [s["value"] for i in ok for s in samples[i] if s["metric"] == m]
              for m in ("prefill_ms", "decode_ms_per_step")}
    out.update(timing_columns(pooled["prefill_ms"], pooled["decode_ms_per_step"], batch, seq_len))
    for metric in ("prefill_ms", "decode_ms_per_step"):
        per_process = [rows[i][metric] for i in ok]
        out[metric] = float(np.median(per_process))
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = median_ci(per_process)
    tokens = {"prefill": batch * seq_len, "decode": batch}
    for phase, metric in (("prefill", "prefill_ms"), ("decode", "decode_ms_per_step")):
        rate = f"{phase}_tok_s"
        out[rate] = _per_second(tokens[phase], out[metric])
        out[f"{rate}_ci_low"] = _per_second(tokens[phase], out[f"{metric}_ci_high"])
        out[f"{rate}_ci_high"] = _per_second(tokens[phase], out[f"{metric}_ci_low"])
    # Efficiencies are work / time / ceiling: the same work and ceiling over the combined time.
    for column, metric in (("decode_mbu", "decode_ms_per_step"), ("decode_mbu_peak", "decode_ms_per_step"),
                           ("prefill_mfu", "prefill_ms"), ("prefill_mfu_peak", "prefill_ms")):
        value = first.get(column, math.nan)
        out[column] = value * first[metric] / out[metric] if _finite(value) and out[metric] > 0 else math.nan
    for column in PEAK_COLUMNS:  # the largest any process saw
        values = [rows[i].get(column) for i in ok if _finite(rows[i].get(column))]
        out[column] = max(values) if values else math.nan
    for column in ("calibration_before_ms", "calibration_after_ms"):
        values = [rows[i][column] for i in ok if _finite(rows[i].get(column))]
        out[column] = float(np.median(values)) if values else math.nan
    last = rows[ok[-1]]
    for key in [k for k in last if k.startswith("gpu_") and k.endswith("_after")]:
        out[key] = last[key]
    reasons = sorted({name for i in ok for name in str(rows[i].get("gpu_throttle_reasons") or "").split("+") if name})
    if "gpu_throttle_reasons" in first:
        out["gpu_throttle_reasons"] = "+".join(reasons)
        out["gpu_throttled"] = any(bool(rows[i].get("gpu_throttled")) for i in ok)
    out["cuda_graph_replayed"] = all(bool(rows[i].get("cuda_graph_replayed")) for i in ok)
    for column in ("compile_graphs", "compile_recompiles"):
        out[column] = max(rows[i].get(column) or 0 for i in ok)
    out["elapsed_s"] = round(sum(r.get("elapsed_s") or 0 for r in rows), 3)
    out["processes"] = len(ok)
    failed = [i for i in range(len(rows)) if i not in ok]
    if failed:
        bad = rows[failed[0]]
        out["status"] = bad.get("status", "error")
        out["error"] = (f"process {failed[0] + 1} of {len(rows)}: {bad.get('error', '')} (the {len(ok)} ok "
                        f"processes' figures are kept)")
    return out


def _per_second(units: float, ms: float) -> float:
    return units / (ms / 1e3) if _finite(ms) and ms > 0 else math.nan


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
