"""How device work is timed, as triton's `do_bench` does it: warm-up by time, repetitions by
time, the median.

- `time_ms`: one measurement. On CUDA a pair of events around the work (read after one
  synchronize); on CPU the clock after the work returns (CPU ops are synchronous).
- `warm_up`: calls until at least `min_ms` of them and at least `min_calls` have run; returns
  the mean time of one call, which sizes what follows.
- `bench_ms`: do_bench: estimate one call, warm up for ~25 ms (the estimating calls count),
  then time each of as many calls as fit in ~100 ms (at least `min_reps`); the samples, whose
  median the caller reports.
- `quantiles`: median and quartiles; quartiles of fewer than 3 samples are NaN (two values
  have no quartiles worth the name).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

WARMUP_MS = 25.0  # do_bench's default warm-up
REP_MS = 100.0  # do_bench's default measuring time
MIN_QUARTILE_SAMPLES = 3


def device_sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str) -> float:
    """Milliseconds fn's device work takes (fn must launch all of it before returning)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def warm_up(fn: Callable[[], object], device: str, min_ms: float = WARMUP_MS, min_calls: int = 2) -> float:
    """Call fn until at least min_ms of calls and at least min_calls have run (never timed as a
    result). Returns the mean milliseconds of one call over the calls after the first (the first
    pays one-time costs), or the first's where there was only one."""
    times = [time_ms(fn, device)]
    while len(times) < min_calls or sum(times) < min_ms:
        times.append(time_ms(fn, device))
    return float(np.mean(times[1:] if len(times) > 1 else times))


def bench_ms(fn: Callable[[], object], device: str, warmup_ms: float = WARMUP_MS, rep_ms: float = REP_MS,
             min_reps: int = 5) -> list[float]:
    """triton's do_bench: after one untimed call, one call's time estimated over up to 5 calls
    (fewer when they already fill warmup_ms), warm-up calls for the rest of warmup_ms, then
    max(min_reps, rep_ms / estimate) calls each timed alone. Returns their times (ms)."""
    fn()
    device_sync(device)
    first = []
    while len(first) < 5 and sum(first) < warmup_ms:
        first.append(time_ms(fn, device))
    estimate = max(float(np.median(first)), 1e-6)
    for _ in range(int(max(0.0, warmup_ms - sum(first)) / estimate)):
        fn()
    return [time_ms(fn, device) for _ in range(max(min_reps, int(rep_ms / estimate)))]


def quantiles(samples: list[float]) -> dict[str, float]:
    """Median and quartiles: nan for no samples, quartiles nan for fewer than 3."""
    if not samples:
        return dict(p25=math.nan, p50=math.nan, p75=math.nan)
    values = np.asarray(samples, dtype=float)
    p50 = float(np.median(values))
    if len(values) < MIN_QUARTILE_SAMPLES:
        return dict(p25=math.nan, p50=p50, p75=math.nan)
    p25, p75 = np.percentile(values, [25, 75])
    return dict(p25=float(p25), p50=p50, p75=float(p75))
