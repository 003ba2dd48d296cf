"""The decision rule on synthetic runs whose truth is known: false alarms and power by simulation.

Each run's value is log-normal around its true level (a process's luck, between-run spread SIGMA in
log units); a suite has TIMINGS timings. The gate's procedure is composed from bench.judge.stats as
bench.judge.gate does it: a first pass of RUNS runs a side, every timing tested (one-sided, Holm
over all); those that lean worse (stats.worth_confirming) get CONFIRM more runs a side and are
decided on all their runs, Holm still over every timing. Seeds are fixed: the counts are exact
for this code, and the bounds below are the promises README states.

Stated bounds (README, "Performance gate"):
- identical code: at most 1% of gates fail (family-wise; checked as <= 2% of 300 simulated gates,
  with normal and heavy-tailed noise);
- a 25% slowdown of one timing: failed with that timing named in >= 97% of gates at 10% spread
  between runs, >= 85% at 15% (the gate's defaults, 10 + 10 runs a side);
- a 25% speed-up: reported improved in >= 95% of gates at 10% spread, never regressed (the other
  timings fail a gate at the identical-code rate);
- with one run a side (repeats only, `likely` verdicts) and 5% luck between runs: a 30% slowdown
  is called likely regressed in >= 75% of comparisons; identical code gets a likely regression
  in <= 15% of comparisons of 12 timings (about 10%; at 10% luck about 70%: one run a side
  cannot tell a process's luck from a change, which is why those verdicts are only `likely`).
"""

import math

import numpy as np
import pytest

from bench.judge import stats
from bench.judge.gate import DEFAULT_CONFIRM_RUNS, DEFAULT_RUNS

TIMINGS = 12  # the smoke suite: 6 cases x (prefill_ms, decode_ms_per_step)
SLOWDOWN = math.log(1.25)


def draw(rng, n, sigma, shift=0.0, tails="normal"):
    noise = rng.standard_normal(n) if tails == "normal" else rng.standard_t(3, n) / math.sqrt(3)
    return np.exp(shift + sigma * noise)


def gate(rng, sigma, shifts, runs=DEFAULT_RUNS, confirm=DEFAULT_CONFIRM_RUNS, tails="normal"):
    """One simulated gate over len(shifts) timings: their final decisions (status per timing)."""
    base = [draw(rng, runs, sigma, 0.0, tails) for _ in shifts]
    new = [draw(rng, runs, sigma, s, tails) for s in shifts]
    first = [stats.evidence(b, n) for b, n in zip(base, new)]
    decisions = stats.decide_all(first)
    statuses = [d.status for d in decisions]
    rerun = [i for i, e in enumerate(first) if stats.worth_confirming(e, 0.05)]
    if rerun:
        pooled = [stats.evidence(np.r_[base[i], draw(rng, confirm, sigma, 0.0, tails)],
                                 np.r_[new[i], draw(rng, confirm, sigma, shifts[i], tails)]) for i in rerun]
        for i, d in zip(rerun, stats.decide_all(pooled, family_size=len(shifts))):
            statuses[i] = d.status
    return statuses


@pytest.mark.parametrize("tails", ["normal", "heavy"])
def test_identical_code_fails_at_most_one_gate_in_a_hundred(tails):
    rng = np.random.default_rng(2024)
    failed = sum("regressed" in gate(rng, 0.10, [0.0] * TIMINGS, tails=tails) for _ in range(300))
    assert failed <= 6  # 2% of 300: the 1% family-wise bound, with room for the simulation's own noise


def slowdown_found(rng, sigma):
    """One gate against a 25% slowdown of timing 0, simulating that timing alone with Holm over all
    twelve (conservative: null timings can only make Holm's later steps easier)."""
    base, new = draw(rng, DEFAULT_RUNS, sigma), draw(rng, DEFAULT_RUNS, sigma, SLOWDOWN)
    first = stats.evidence(base, new)
    if not stats.worth_confirming(first, 0.05):
        return stats.decide_all([first], family_size=TIMINGS)[0].status == "regressed"
    pooled = stats.evidence(np.r_[base, draw(rng, DEFAULT_CONFIRM_RUNS, sigma)],
                            np.r_[new, draw(rng, DEFAULT_CONFIRM_RUNS, sigma, SLOWDOWN)])
    return stats.decide_all([pooled], family_size=TIMINGS)[0].status == "regressed"


@pytest.mark.parametrize("sigma,least", [(0.10, 0.97), (0.15, 0.85)])
def test_a_25_percent_slowdown_is_caught(sigma, least):
    rng = np.random.default_rng(7)
    found = sum(slowdown_found(rng, sigma) for _ in range(200))
    assert found >= least * 200


def test_the_whole_gate_names_the_slowed_timing_and_nothing_else():
    rng = np.random.default_rng(11)
    outcomes = [gate(rng, 0.10, [SLOWDOWN] + [0.0] * (TIMINGS - 1)) for _ in range(40)]
    assert sum(o[0] == "regressed" for o in outcomes) >= 38
    assert sum("regressed" in o[1:] for o in outcomes) <= 1


def test_pooling_beats_two_tests_in_series():
    """The old rule (flag on the first pass, confirm on fresh runs alone, both two-sided at alpha,
    the bar from the noisier side) against this one, on the same draws."""
    rng = np.random.default_rng(3)
    sigma, pooled_found, series_found = 0.15, 0, 0
    for _ in range(150):
        base, new = draw(rng, 10, sigma), draw(rng, 10, sigma, SLOWDOWN)
        base2, new2 = draw(rng, 10, sigma), draw(rng, 10, sigma, SLOWDOWN)
        e = stats.evidence(np.r_[base, base2], np.r_[new, new2])
        pooled_found += stats.decide_all([e], family_size=TIMINGS)[0].status == "regressed"
        series_found += all(_old_rule(b, n) for b, n in ((base, new), (base2, new2)))
    assert pooled_found >= series_found + 30


def _old_rule(base, new, alpha=0.01):
    _, p = stats.mann_whitney_u(base, new)
    bar = max(0.05, stats.relative_spread(base), stats.relative_spread(new))
    return p < alpha and np.median(new) / np.median(base) > 1 + bar


def test_a_25_percent_speedup_is_improved_and_never_regressed():
    """The sped-up timing is never called regressed; the other eleven are identical code, so they
    may fail a gate at the family-wise rate (1%, checked as <= 2% as above), not more."""
    rng = np.random.default_rng(5)
    outcomes = [gate(rng, 0.10, [-math.log(1 / 0.75)] + [0.0] * (TIMINGS - 1)) for _ in range(200)]
    assert sum(o[0] == "improved" for o in outcomes) >= 0.95 * 200
    assert not any(o[0] == "regressed" for o in outcomes)
    assert sum("regressed" in o[1:] for o in outcomes) <= 4


@pytest.mark.parametrize("n", [7, 10])
def test_the_hodges_lehmann_interval_covers_the_true_ratio(n):
    rng = np.random.default_rng(n)
    covered = 0
    for _ in range(400):
        e = stats.evidence(draw(rng, n, 0.1), draw(rng, n, 0.1, SLOWDOWN))
        covered += e.ratio_low <= 1.25 <= e.ratio_high
    # 95% nominal; exact order statistics are conservative (>= 95% but discrete)
    assert 0.93 * 400 <= covered <= 0.99 * 400


def one_run_a_side(rng, shifts, luck=0.05, within=0.05, repeats=9):
    """A compare of two single runs: every timing judged on its repeats (basis "repeats")."""
    evidences = []
    for shift in shifts:
        base = np.exp(rng.normal(0, luck) + rng.normal(0, within, repeats))
        new = np.exp(shift + rng.normal(0, luck) + rng.normal(0, within, repeats))
        evidences.append(stats.evidence(base, new, basis="repeats"))
    return [d.status for d in stats.decide_all(evidences)]


def test_with_one_run_a_side_a_30_percent_slowdown_is_likely_and_identical_code_rarely_is():
    rng = np.random.default_rng(9)
    slow = [one_run_a_side(rng, [math.log(1.3)] + [0.0] * (TIMINGS - 1)) for _ in range(100)]
    assert sum(s[0] == "likely regressed" for s in slow) >= 75
    same = [one_run_a_side(rng, [0.0] * TIMINGS) for _ in range(100)]
    assert sum("likely regressed" in s for s in same) <= 15
    assert all(set(s) <= set(stats.LIKELY) for s in slow + same)  # never a decided verdict
