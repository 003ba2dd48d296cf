"""The largest batch that fits (`batch = "max"` in a suite): YOCO's throughput claim is made at
the batch each architecture can hold in the same memory, so a fixed batch has no counterpart.

For a case with batch "max" and a memory cap (the suite's `memory_cap_gb`, default the device's
memory): start from the estimate (the cap over the bytes one more sequence adds: its cache and its
prefill activations, estimated on the meta device), confirm by running the case there, step down
on out-of-memory and up while it fits, and measure the largest batch that fitted with the suite's
repeats. "Fits" is the allocator staying under a real cap on CUDA (bench.measure.trackers.
cap_memory: going past it is an out-of-memory error) and, on a CPU, where nothing can cap a
process's allocations, the measured peak above what the process held before the model
(peak_mem_* - mem_before_model_bytes) staying under the cap.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

MAX_TRIES = 8  # probe runs before the final measurement (each is a whole case: prefill + decode)


def estimated_bytes(case, batch: int) -> float:
    """What a case needs at `batch` (bench.measure.runner.estimate: the prefill peak where it is
    estimated, else weights + cache)."""
    from bench.measure.runner import estimate

    e = estimate(dataclasses.replace(case, batch=batch))
    return float(e.get("estimated_peak_bytes", e["estimated_bytes"]))


def start_batch(case, cap_bytes: float) -> tuple[int, float, float]:
    """(first batch to try, fixed bytes, bytes per sequence) from the estimate at batch 1 and 2."""
    one, two = estimated_bytes(case, 1), estimated_bytes(case, 2)
    per_sequence = max(two - one, 1.0)
    fixed = one - per_sequence
    return max(1, int((cap_bytes - fixed) // per_sequence)), fixed, per_sequence


def peak_bytes(row: dict, device: str) -> float:
    """A probe's peak memory as the cap judges it (nan where the row has no figure)."""
    peak = max(_num(row.get("peak_mem_prefill_bytes")), _num(row.get("peak_mem_decode_bytes")))
    if device != "cuda":
        peak -= _num(row.get("mem_before_model_bytes"), 0.0)
    return peak


def fits(row: dict, device: str, cap_bytes: float) -> bool:
    """Whether a probe row stayed under the cap (see the module docstring)."""
    if row.get("status") != "ok":
        return False
    return not peak_bytes(row, device) > cap_bytes  # a nan peak (no figure) is not evidence of a miss


def search(case, device: str, cap_bytes: float, run_at: Callable[[int, bool], dict],
           max_tries: int = MAX_TRIES) -> tuple[dict, int | None, list[str]]:
    """The row of the largest batch that fits, measured in full, that batch (None if none fits),
    and the probes' log.

    run_at(batch, final) runs the case at that batch (final: with the suite's repeats; else a
    probe, as short as possible) and returns its row. A status other than ok/oom stops the search
    with that row: an error is not a memory limit. After each probe that reports its peak, the
    next batch comes from the measured bytes per sequence (the estimate's fixed part kept);
    without one, from geometric steps; always strictly between the batches known to fit and not.
    Memory is taken to grow about linearly with the batch (cache and activations per sequence)."""
    batch, fixed, _ = start_batch(case, cap_bytes)
    good, bad = 0, math.inf  # the largest batch seen to fit, the smallest seen not to
    log: list[str] = []
    measured: dict[int, float] = {}  # batch -> peak
    for _ in range(max_tries):
        row = run_at(batch, False)
        if row.get("status") not in ("ok", "oom"):
            log.append(f"{batch} {row.get('status')}")
            return row, None, log
        ok = fits(row, device, cap_bytes)
        peak = peak_bytes(row, device) if row.get("status") == "ok" else math.nan
        log.append(f"{batch} {'fits' if ok else 'over'}" + (f" ({peak / 2**20:.0f} MiB)" if peak == peak else ""))
        good, bad = (batch, bad) if ok else (good, batch)
        if bad - good <= 1:
            break
        if peak == peak:
            measured[batch] = peak
        if len(measured) >= 2:  # the line through the last two measured points: its own fixed part
            (b1, p1), (b2, p2) = list(measured.items())[-2:]
            fixed = p1 - (p2 - p1) / (b2 - b1) * b1
        batch = _next_batch(batch, peak, fixed, cap_bytes, good, bad)
    while good >= 1:  # the final measurement can still miss (fragmentation, a longer run): step down
        row = run_at(good, True)
        if fits(row, device, cap_bytes) or row.get("status") not in ("ok", "oom"):
            log.append(f"{good} measured")
            return row, good, log
        log.append(f"{good} over when measured")
        good -= 1
    return dict(status="oom", error=f"no batch fits under the cap of {cap_bytes / 2**30:.3g} GiB "
                                    f"(tried {'; '.join(log)})"), None, log


def _next_batch(batch: int, peak: float, fixed: float, cap: float, good: int, bad: float) -> int:
    if peak == peak and peak > fixed:  # measured: bytes per sequence at this batch
        guess = int((cap - fixed) // ((peak - fixed) / batch))
    elif good:  # fitted, no figure: step up
        guess = max(batch + 1, int(batch * 1.25))
    else:  # over (or out of memory): step down
        guess = int(batch * 0.8)
    # strictly between the bounds known: above the largest batch that fitted, below the smallest that did not
    return max(good + 1, min(guess, int(bad) - 1 if bad < math.inf else guess), 1)


def _num(value, default=math.nan) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
