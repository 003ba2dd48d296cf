"""The timing loops' logic (bench.measure.timing) with a fake clock: how many calls warm-up and
do_bench-style repetition make, and quartiles of few samples. Nothing here times anything."""

import math

import pytest

from bench.measure import timing


@pytest.fixture
def fake_clock(monkeypatch):
    """time_ms reports `ms[0]` per call of fn (fn still runs) and counts the calls."""
    state = {"ms": 10.0, "calls": 0}

    def fake_time_ms(fn, device):
        fn()
        return state["ms"]

    monkeypatch.setattr(timing, "time_ms", fake_time_ms)
    return state


def counting():
    calls = []
    return calls, lambda: calls.append(1)


def test_warm_up_runs_for_the_time_and_the_calls_asked(fake_clock):
    calls, fn = counting()
    assert timing.warm_up(fn, "cpu", min_ms=25, min_calls=2) == 10.0
    assert len(calls) == 3  # 10 + 10 < 25 ms: a third call
    fake_clock["ms"] = 100.0
    calls.clear()
    timing.warm_up(fn, "cpu", min_ms=25, min_calls=2)
    assert len(calls) == 2  # 100 ms at once, but at least two calls
    calls.clear()
    timing.warm_up(fn, "cpu", min_ms=25, min_calls=5)
    assert len(calls) == 5


def test_bench_ms_repeats_for_the_time_asked(fake_clock):
    calls, fn = counting()
    fake_clock["ms"] = 1.0
    samples = timing.bench_ms(fn, "cpu", warmup_ms=25, rep_ms=100, min_reps=5)
    assert len(samples) == 100  # 100 ms of 1 ms calls
    # one untimed call, five to estimate, 20 more to fill the 25 ms warm-up, 100 timed
    assert len(calls) == 1 + 5 + 20 + 100
    fake_clock["ms"] = 1000.0  # 1 s a call: the estimating call is the warm-up, min_reps timed
    calls.clear()
    assert len(timing.bench_ms(fn, "cpu", min_reps=5)) == 5
    assert len(calls) == 1 + 1 + 5


def test_quartiles_need_three_samples():
    q = timing.quantiles([1.0, 3.0])
    assert q["p50"] == 2.0 and math.isnan(q["p25"]) and math.isnan(q["p75"])
    q = timing.quantiles([1.0, 2.0, 3.0])
    assert (q["p25"], q["p50"], q["p75"]) == (1.5, 2.0, 2.5)
    assert math.isnan(timing.quantiles([])["p50"])
