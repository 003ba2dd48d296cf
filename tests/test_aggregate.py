"""Combining a case's processes into one row (bench.measure.aggregate): the median of the
per-process medians, its distribution-free 95% interval, and everything derived from them."""

import math

import pytest

from bench.measure import aggregate


def test_median_ci_from_order_statistics():
    assert all(math.isnan(v) for v in aggregate.median_ci([1, 2, 3, 4, 5]))  # (min, max) covers 94%
    assert aggregate.median_ci([6, 1, 5, 2, 4, 3]) == (1.0, 6.0)  # covers 1 - 2/64 = 97%
    # n = 20: P(Bin(20, 1/2) <= 5) = 2.1% per side, <= 6 is 5.8%: the 6th and 15th values
    assert aggregate.median_ci(range(1, 21)) == (6.0, 15.0)
    assert aggregate.median_ci([1.0, float("nan"), 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.0, 6.0)  # NaN dropped


def process_row(prefill_ms, step_ms, **extra):
    row = dict(status="ok", error="", case_id="c", prefill_ms=prefill_ms, decode_ms_per_step=step_ms,
               decode_mbu=0.5, prefill_mfu=0.25, decode_mbu_peak=math.nan, prefill_mfu_peak=math.nan,
               peak_mem_decode_bytes=100.0, calibration_before_ms=1.0, calibration_after_ms=1.0,
               cuda_graph_replayed=True, compile_graphs=0, compile_recompiles=0, elapsed_s=2.0)
    return {**row, **extra}


def samples_of(prefill, steps):
    return ([dict(metric="prefill_ms", value=v) for v in prefill] +
            [dict(metric="decode_ms_per_step", value=v) for v in steps])


def test_six_processes_give_a_median_and_an_interval():
    step = [2.0, 2.2, 1.9, 2.1, 3.0, 2.05]
    rows = [process_row(10.0 + i, s, peak_mem_decode_bytes=100.0 + i) for i, s in enumerate(step)]
    samples = [samples_of([10.0 + i] * 3, [s] * 3) for i, s in enumerate(step)]
    out = aggregate.combine(rows, samples, batch=2, seq_len=64)
    assert out["decode_ms_per_step"] == pytest.approx(2.075)  # median of the six medians
    assert (out["decode_ms_per_step_ci_low"], out["decode_ms_per_step_ci_high"]) == (1.9, 3.0)
    assert out["decode_tok_s"] == pytest.approx(2 / 2.075e-3)  # the same estimator
    assert out["decode_tok_s_ci_low"] == pytest.approx(2 / 3.0e-3)
    assert out["prefill_tok_s"] == pytest.approx(2 * 64 / 12.5e-3)
    # efficiency: the first process's, rescaled to the combined time
    assert out["decode_mbu"] == pytest.approx(0.5 * 2.0 / 2.075)
    assert out["prefill_mfu"] == pytest.approx(0.25 * 10.0 / 12.5)
    assert out["peak_mem_decode_bytes"] == 105.0  # the largest any process saw
    assert out["processes"] == 6 and out["status"] == "ok" and out["elapsed_s"] == 12.0
    assert out["decode_ms_per_step_p25"] == pytest.approx(2.0)  # quartiles of all samples pooled


def test_one_process_has_no_interval_and_a_failed_process_marks_the_row():
    rows = [process_row(10.0, 2.0)]
    out = aggregate.combine(rows, [samples_of([10.0, 11.0], [2.0, 2.1])], 1, 8)
    assert out["processes"] == 1 and math.isnan(out["prefill_ms_ci_low"])
    assert math.isnan(out["prefill_ms_p25"])  # two samples: no quartiles
    failed = dict(status="oom", error="CUDA out of memory", case_id="c", elapsed_s=1.0)
    out = aggregate.combine([process_row(10.0, 2.0), failed], [samples_of([10.0], [2.0]), []], 1, 8)
    assert out["status"] == "oom" and out["error"].startswith("process 2 of 2: CUDA out of memory")
    assert out["prefill_ms"] == 10.0 and out["processes"] == 1
    out = aggregate.combine([failed], [[]], 1, 8)
    assert out["status"] == "oom" and out["processes"] == 0
