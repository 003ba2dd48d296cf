"""The gate's decision rule: Mann-Whitney U against brute force, then `decide`."""

import itertools
import math

import numpy as np
import pytest

from bench.judge.stats import (
    EXACT_MAX_N,
    decide,
    mann_whitney_u,
    midranks,
    min_attainable_p,
    relative_spread,
)


def brute_force_p(x, y):
    """Two-sided permutation p of the rank sum, by enumerating every split (the definition)."""
    pooled = list(x) + list(y)
    ranks = midranks(pooled)
    n, n1 = len(pooled), len(x)
    mean = n1 * (n + 1) / 2
    observed = abs(ranks[:n1].sum() - mean)
    splits = list(itertools.combinations(range(n), n1))
    hits = sum(abs(ranks[list(s)].sum() - mean) >= observed - 1e-9 for s in splits)
    return hits / len(splits)


def test_midranks_share_tied_ranks():
    assert midranks([10, 20, 20, 30, 20]).tolist() == [1, 3, 3, 5, 3]


def test_complete_separation_gives_the_smallest_p():
    _, p = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert p == pytest.approx(2 / 20)
    _, p = mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
    assert p == pytest.approx(2 / 252) == pytest.approx(min_attainable_p(5, 5))
    assert p < 0.01  # five runs a side can reach alpha = 0.01, four cannot
    assert min_attainable_p(4, 4) > 0.01


def test_u_counts_pairs_where_x_wins():
    u, _ = mann_whitney_u([1, 5, 5], [2, 5])
    # pairs: (1,2) 0, (1,5) 0, (5,2) 1, (5,5) .5, (5,2) 1, (5,5) .5
    assert u == 3.0


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = rng.integers(2, 7, size=2)
    # few distinct values: many ties
    x = rng.integers(0, 4, size=n1)
    y = rng.integers(1, 5, size=n2)
    _, p = mann_whitney_u(x, y)
    if np.all(np.concatenate([x, y]) == x[0]):
        assert p == 1.0
    else:
        assert p == pytest.approx(brute_force_p(x, y), abs=1e-12)


def test_p_is_symmetric_and_shift_invariant():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=6), rng.normal(0.8, size=7)
    _, pxy = mann_whitney_u(x, y)
    _, pyx = mann_whitney_u(y, x)
    _, p_shift = mann_whitney_u(x * 3 + 5, y * 3 + 5)
    assert pxy == pytest.approx(pyx) == pytest.approx(p_shift)


def test_normal_approximation_agrees_with_exact_near_the_switch():
    rng = np.random.default_rng(3)
    x = rng.normal(size=EXACT_MAX_N)
    y = rng.normal(0.6, size=EXACT_MAX_N)
    _, exact = mann_whitney_u(x, y)
    # one more value on each side switches to the normal approximation
    _, approx = mann_whitney_u(np.append(x, 0.0), np.append(y, 0.6))
    assert 0.001 < exact < 0.2
    assert approx == pytest.approx(exact, rel=0.5)


def test_normal_approximation_by_hand_with_ties():
    x = [1.0] * 15 + [2.0] * 10
    y = [2.0] * 10 + [3.0] * 15
    u, p = mann_whitney_u(x, y)
    n1 = n2 = 25
    n = 50
    ties = np.array([15, 20, 15])
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1))))
    z = (abs(u - n1 * n2 / 2) - 0.5) / sigma
    assert u == 15 * 0 + 10 * 5  # each 2.0 in x ties with the ten 2.0 in y
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))


def test_all_tied_is_no_evidence():
    assert mann_whitney_u([3, 3, 3], [3, 3])[1] == 1.0
    assert mann_whitney_u([3] * 30, [3] * 30)[1] == 1.0


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="non-empty"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        mann_whitney_u([1.0, float("nan")], [2.0])
    with pytest.raises(ValueError, match="alpha"):
        decide([1.0], [1.0], alpha=1.5)
    with pytest.raises(ValueError, match="min_effect"):
        decide([1.0], [1.0], min_effect=-0.1)


def test_relative_spread_is_iqr_over_median():
    assert relative_spread([1, 2, 3, 4, 5]) == pytest.approx((4 - 2) / 3)
    assert relative_spread([2.0]) == 0.0


def runs(rng, center, spread, n=7):
    return center * (1 + spread * rng.standard_normal(n))


def test_decide_flags_a_clear_slowdown_and_a_clear_speedup():
    rng = np.random.default_rng(0)
    base = runs(rng, 10.0, 0.02)
    slow = decide(base, runs(rng, 12.5, 0.02))
    assert slow.status == "regressed" and slow.ratio == pytest.approx(1.25, rel=0.05)
    fast = decide(base, runs(rng, 8.0, 0.02))
    assert fast.status == "improved"
    # higher is better (tokens per second): the same numbers read the other way
    assert decide(base, runs(rng, 12.5, 0.02), lower_is_better=False).status == "improved"
    assert decide(base, runs(rng, 8.0, 0.02), lower_is_better=False).status == "regressed"


def test_significant_but_small_moves_are_unchanged():
    rng = np.random.default_rng(1)
    base = runs(rng, 10.0, 0.001)
    d = decide(base, base * 1.03)  # separated (p tiny) but below the 5% minimum effect
    assert d.p < 0.01 and d.status == "unchanged"
    assert decide(base, base * 1.03, min_effect=0.01).status == "regressed"


def test_noise_floor_raises_the_bar():
    # every run separated (p < alpha), but runs of one side spread over 92% (IQR / median)
    base = [10.0, 30.0, 10.5, 29.0, 20.0]
    wide = decide(base, [31.0, 32.0, 33.0, 34.0, 35.0])
    assert wide.p < 0.01 and wide.ratio == pytest.approx(1.65)
    assert wide.noise == pytest.approx(relative_spread(base)) == pytest.approx(18.5 / 20)
    assert wide.threshold == pytest.approx(wide.noise)
    assert wide.status == "unchanged"
    # the same noise, a move beyond it: flagged
    assert decide(base, [41.0, 42.0, 43.0, 44.0, 45.0]).status == "regressed"
    # the noise factor scales the floor
    assert decide(base, [31.0, 32.0, 33.0, 34.0, 35.0], noise_factor=0.5).status == "regressed"


def test_not_significant_is_unchanged_whatever_the_ratio():
    # two runs a side cannot reach alpha = 0.01, however far apart
    d = decide([1.0, 1.1], [5.0, 5.5])
    assert d.ratio > 4 and d.p > 0.01 and d.status == "unchanged"


def test_false_alarm_rate_on_identical_distributions_is_low():
    rng = np.random.default_rng(2)
    decisions = [decide(runs(rng, 10, 0.1, 5), runs(rng, 10, 0.1, 5)) for _ in range(1000)]
    significant = sum(d.p < 0.01 for d in decisions)
    flagged = sum(d.status != "unchanged" for d in decisions)
    # 5 runs a side: significance needs complete separation, 2/252 = 0.8% under the null
    assert significant <= 16
    assert flagged <= significant
