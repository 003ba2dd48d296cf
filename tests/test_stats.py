"""The gate's decision rule, piece by piece: Mann-Whitney U and the Hodges-Lehmann interval against
brute force, Holm by hand, then `evidence` / `decide_all` on values whose answer is known.
(tests/test_stats_simulation.py checks the whole rule's power and false-alarm rate.)"""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from bench.judge import stats
from bench.judge.stats import (
    EXACT_MAX_N,
    Evidence,
    can_decide,
    decide,
    decide_all,
    evidence,
    hodges_lehmann,
    holm,
    mann_whitney_u,
    midranks,
    min_attainable_p,
    relative_spread,
    runs_needed,
    worth_confirming,
)


def brute_force_p(x, y, alternative="two-sided"):
    """Permutation p of x's rank sum, by enumerating every split (the definition)."""
    pooled = list(x) + list(y)
    ranks = midranks(pooled)
    n, n1 = len(pooled), len(x)
    mean = n1 * (n + 1) / 2
    observed = ranks[:n1].sum()
    sums = [ranks[list(s)].sum() for s in itertools.combinations(range(n), n1)]
    if alternative == "greater":
        hits = sum(s >= observed - 1e-9 for s in sums)
    elif alternative == "less":
        hits = sum(s <= observed + 1e-9 for s in sums)
    else:
        hits = sum(abs(s - mean) >= abs(observed - mean) - 1e-9 for s in sums)
    return hits / len(sums)


def brute_force_u_cdf(n1, n2):
    """P(U <= u) for u = 0..n1*n2 with no ties, by enumerating every split."""
    n = n1 + n2
    us = [sum(s) + n1 - n1 * (n1 + 1) / 2 for s in itertools.combinations(range(n), n1)]
    return np.array([sum(u <= k for u in us) for k in range(n1 * n2 + 1)]) / len(us)


def test_midranks_share_tied_ranks():
    assert midranks([10, 20, 20, 30, 20]).tolist() == [1, 3, 3, 5, 3]
    assert midranks([3.0, 1.0, 2.0]).tolist() == [3, 1, 2]
    assert midranks([7, 7]).tolist() == [1.5, 1.5]


def test_complete_separation_gives_the_smallest_p():
    _, p = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert p == pytest.approx(2 / 20) == pytest.approx(min_attainable_p(3, 3, "two-sided"))
    _, p = mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5], "greater")
    assert p == pytest.approx(1 / 252) == pytest.approx(min_attainable_p(5, 5))
    _, p = mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5], "less")
    assert p == 1.0
    assert min_attainable_p(0, 5) == 1.0 and min_attainable_p(3, 0) == 1.0
    assert min_attainable_p(0, 5, "two-sided") == 1.0 and min_attainable_p(0, 0, "two-sided") == 1.0
    assert min_attainable_p(1, 1, "two-sided") == 1.0 and min_attainable_p(1, 1) == 0.5
    assert min_attainable_p(2, 2, "less") == min_attainable_p(2, 2, "greater") == 1 / 6
    with pytest.raises(ValueError, match="^alternative must be one of two-sided, greater, less, got 'one-sided'$"):
        min_attainable_p(2, 2, "one-sided")


def test_u_counts_pairs_where_x_wins():
    u, _ = mann_whitney_u([1, 5, 5], [2, 5])
    # pairs: (1,2) 0, (1,5) 0, (5,2) 1, (5,5) .5, (5,2) 1, (5,5) .5
    assert u == 3.0
    assert mann_whitney_u([2, 5], [1, 5, 5])[0] == 6 - 3.0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("alternative", stats.ALTERNATIVES)
def test_exact_p_matches_brute_force_with_ties(seed, alternative):
    rng = np.random.default_rng(seed)
    n1, n2 = rng.integers(2, 7, size=2)
    # few distinct values: many ties
    x = rng.integers(0, 4, size=n1)
    y = rng.integers(1, 5, size=n2)
    _, p = mann_whitney_u(x, y, alternative)
    if np.all(np.concatenate([x, y]) == x[0]):
        assert p == 1.0
    else:
        assert p == pytest.approx(brute_force_p(x, y, alternative), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_exact_p_without_ties_matches_brute_force(seed):
    rng = np.random.default_rng(10 + seed)
    n1, n2 = rng.integers(2, 8, size=2)
    x, y = rng.normal(size=n1), rng.normal(0.5, size=n2)
    for alternative in stats.ALTERNATIVES:
        assert mann_whitney_u(x, y, alternative)[1] == pytest.approx(brute_force_p(x, y, alternative), abs=1e-12)


def test_one_sided_p_values_add_up_and_flip():
    x, y = [1.0, 2.5, 4.0, 6.0], [3.0, 5.0, 7.0, 8.0, 9.0]
    greater, less = mann_whitney_u(x, y, "greater")[1], mann_whitney_u(x, y, "less")[1]
    # without ties, P(R >= r) + P(R <= r) = 1 + P(R = r)
    assert 1 < greater + less <= 1 + 0.2
    assert mann_whitney_u(y, x, "greater")[1] == pytest.approx(less)
    assert mann_whitney_u(x, y)[1] == pytest.approx(min(1, 2 * min(greater, less)))


def test_p_is_symmetric_and_shift_invariant():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=6), rng.normal(0.8, size=7)
    _, pxy = mann_whitney_u(x, y)
    _, pyx = mann_whitney_u(y, x)
    _, p_shift = mann_whitney_u(x * 3 + 5, y * 3 + 5)
    assert pxy == pytest.approx(pyx) == pytest.approx(p_shift)


@pytest.mark.parametrize("alternative", stats.ALTERNATIVES)
def test_normal_approximation_agrees_with_exact_near_the_switch(alternative):
    rng = np.random.default_rng(3)
    x = rng.normal(size=EXACT_MAX_N)
    y = rng.normal(-0.7 if alternative == "greater" else 0.7, size=EXACT_MAX_N)
    _, exact = mann_whitney_u(x, y, alternative)
    # one more value on each side switches to the normal approximation
    _, approx = mann_whitney_u(np.append(x, 0.0), np.append(y, 0.0), alternative)
    assert 0.0005 < exact < 0.2
    assert approx == pytest.approx(exact, rel=0.5)


def test_exact_up_to_and_including_exact_max_n():
    """At EXACT_MAX_N a side the p-value is the exact count, not the normal approximation's."""
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=EXACT_MAX_N), rng.normal(0.8, size=EXACT_MAX_N)
    ranks = stats.midranks(np.concatenate([x, y]))
    exact = stats._exact_p(ranks, EXACT_MAX_N)
    normal = stats._normal_p(mann_whitney_u(x, y)[0], EXACT_MAX_N, EXACT_MAX_N, ranks)
    for alternative in stats.ALTERNATIVES:
        assert mann_whitney_u(x, y, alternative)[1] == exact[alternative] != normal[alternative]


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
    # one-sided: x is smaller, so "less" is the small tail, "greater" the large one
    assert mann_whitney_u(x, y, "less")[1] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    z_greater = (u - n1 * n2 / 2 - 0.5) / sigma
    assert mann_whitney_u(x, y, "greater")[1] == pytest.approx(0.5 * math.erfc(z_greater / math.sqrt(2)))
    # the other way round "greater" is the small tail, with the same continuity correction
    u_y, p_y = mann_whitney_u(y, x, "greater")
    assert u_y == n1 * n2 - u
    assert p_y == pytest.approx(0.5 * math.erfc((u_y - n1 * n2 / 2 - 0.5) / sigma / math.sqrt(2)), rel=1e-9)
    assert mann_whitney_u(y, x, "less")[1] == pytest.approx(0.5 * math.erfc((n1 * n2 / 2 - u_y - 0.5) / sigma
                                                                              / math.sqrt(2)), rel=1e-9)


def test_normal_approximation_of_a_balanced_split_is_no_evidence():
    x = [1.0, 2.0, 3.0] * 8  # 24 a side: the normal approximation
    u, p = mann_whitney_u(x, list(x))
    assert u == 24 * 24 / 2 and p == 1.0
    _, p_less = mann_whitney_u(x, list(x), "less")
    assert 0.5 < p_less < 0.6  # continuity-corrected: a little over one half


def test_any_iterable_of_numbers_will_do():
    assert mann_whitney_u((v for v in [1, 2, 3]), iter([4.0, 5.0, 6.0]), "greater")[1] == 1.0
    assert relative_spread(x for x in ["1", "2", "3", "4", "5"]) == pytest.approx(2 / 3)  # numbers as text
    assert relative_spread([2**70, 2**70, 2**71]) == pytest.approx(0.5)  # beyond int64


def test_all_tied_is_no_evidence():
    for alternative in stats.ALTERNATIVES:
        assert mann_whitney_u([3, 3, 3], [3, 3], alternative)[1] == 1.0
        assert mann_whitney_u([3] * 30, [3] * 30, alternative)[1] == 1.0


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="^x must be a non-empty list of numbers, got 0 values"):
        mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match="^y must be a non-empty"):
        mann_whitney_u([1.0], [])
    with pytest.raises(ValueError, match="^x must be finite"):
        mann_whitney_u([1.0, float("nan")], [2.0])
    with pytest.raises(ValueError, match="^y must be finite numbers, got"):
        mann_whitney_u([1.0], [2.0, float("inf")])
    with pytest.raises(ValueError, match="^new must be positive"):
        evidence([1.0], [0.0])
    with pytest.raises(ValueError, match="^base must be a non-empty"):
        evidence([], [1.0])
    with pytest.raises(ValueError, match="^values must be finite"):
        relative_spread([1.0, math.inf])
    with pytest.raises(ValueError, match="^x must be finite"):
        hodges_lehmann([math.nan], [1.0])
    with pytest.raises(ValueError, match="^y must be a non-empty"):
        hodges_lehmann([1.0], [])
    with pytest.raises(ValueError, match="confidence"):
        hodges_lehmann([1.0], [1.0], confidence=0)
    with pytest.raises(ValueError, match="alpha"):
        decide([1.0], [1.0], alpha=1.0)
    with pytest.raises(ValueError, match="^base must be positive"):
        evidence([-1.0], [1.0])
    with pytest.raises(ValueError, match="alternative must be one of two-sided, greater, less, got 'bigger'"):
        mann_whitney_u([1.0], [2.0], "bigger")
    with pytest.raises(ValueError, match="alpha"):
        decide([1.0], [1.0], alpha=1.5)
    with pytest.raises(ValueError, match="alpha"):
        decide([1.0], [1.0], alpha=0)
    with pytest.raises(ValueError, match="min_effect"):
        decide([1.0], [1.0], min_effect=-0.1)
    with pytest.raises(ValueError, match="noise_factor"):
        decide([1.0], [1.0], noise_factor=-1)
    with pytest.raises(ValueError, match="positive"):
        evidence([1.0, 0.0], [1.0])
    with pytest.raises(ValueError, match="^basis must be one of runs, repeats, got 'processes'$"):
        evidence([1.0], [1.0], basis="processes")
    with pytest.raises(ValueError, match="noise"):
        evidence([1.0], [1.0], noise=-0.1)
    with pytest.raises(ValueError, match="noise"):
        evidence([1.0], [1.0], noise=math.nan)
    with pytest.raises(ValueError, match="confidence"):
        hodges_lehmann([1.0], [1.0], confidence=1.0)
    with pytest.raises(ValueError, match="fallback_min_effect"):
        decide_all([], fallback_min_effect=-0.5)
    assert decide_all([], fallback_min_effect=0) == []
    # the edge values are allowed
    assert decide([1.0], [1.0], min_effect=0, noise_factor=0).status == "unchanged"
    assert evidence([1.0, 2.0], [1.0, 2.0], noise=0.0).noise == 0.0


def test_relative_spread_is_iqr_over_median():
    assert relative_spread([1, 2, 3, 4, 5]) == pytest.approx((4 - 2) / 3)
    assert relative_spread([2.0]) == 0.0
    assert relative_spread([-1.0, 0.0, 1.0]) == 0.0  # median 0: no scale to be relative to
    assert relative_spread([-4.0, -2.0, -1.0]) == pytest.approx(1.5 / 2)


def test_hodges_lehmann_is_the_median_of_pairwise_differences():
    x, y = [1.0, 2.0, 4.0], [2.0, 3.0, 7.0, 11.0]
    differences = sorted(b - a for a in x for b in y)
    estimate, low, high = hodges_lehmann(x, y, confidence=0.5)
    assert estimate == pytest.approx(np.median(differences))
    assert differences[0] <= low <= estimate <= high <= differences[-1]


@pytest.mark.parametrize("n1,n2", [(3, 5), (4, 4), (5, 6), (7, 7)])
@pytest.mark.parametrize("confidence", [0.8, 0.95])
def test_hodges_lehmann_interval_ends_are_the_brute_force_order_statistics(n1, n2, confidence):
    cdf = brute_force_u_cdf(n1, n2)
    tail = (1 - confidence) / 2
    k = sum(c <= tail + 1e-12 for c in cdf)  # largest k with P(U <= k - 1) <= tail
    rng = np.random.default_rng(n1 * 10 + n2)
    x, y = rng.normal(size=n1), rng.normal(size=n2)
    differences = np.sort((y[None, :] - x[:, None]).ravel())
    _, low, high = hodges_lehmann(x, y, confidence)
    if k == 0:
        assert (low, high) == (-math.inf, math.inf)
    else:
        assert (low, high) == (differences[k - 1], differences[n1 * n2 - k])
    assert (n1, n2, confidence) != (7, 7, 0.95) or k == 9  # tables: lower critical U of 7 v 7 at 5% is 8


def test_hodges_lehmann_interval_with_too_few_values_is_unbounded():
    assert hodges_lehmann([1.0, 2.0], [3.0, 4.0]) == (2.0, -math.inf, math.inf)
    # the normal approximation too: 21 values against one
    assert hodges_lehmann(np.arange(21.0), [5.0])[1:] == (-math.inf, math.inf)


def u_distribution(n1, n2):
    """Counts of U = 0..n1*n2 over all splits, by the textbook recurrence (no ties)."""
    table = {(0, 0): [1]}
    for a in range(n1 + 1):
        for b in range(n2 + 1):
            if a == b == 0:
                continue
            counts = [0] * (a * b + 1)
            if a:  # the largest value is one of x's: it beats all b of y's
                for u, c in enumerate(table[a - 1, b]):
                    counts[u + b] += c
            if b:
                for u, c in enumerate(table[a, b - 1]):
                    counts[u] += c
            table[a, b] = counts
    return np.array(table[n1, n2], dtype=float)


@pytest.mark.parametrize("n", [20, 30])
def test_hodges_lehmann_interval_at_and_beyond_the_exact_range(n):
    counts = u_distribution(n, n)
    cdf = np.cumsum(counts) / counts.sum()
    k = int((cdf <= 0.025 + 1e-12).sum())  # the exact order statistic for 95%
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n)
    differences = np.sort((y[None, :] - x[:, None]).ravel())
    _, low, high = hodges_lehmann(x, y)
    if n <= EXACT_MAX_N:
        assert (low, high) == (differences[k - 1], differences[n * n - k])
    else:  # the normal approximation (textbook formula), within one order statistic of the exact one
        z = NormalDist().inv_cdf(0.975)
        k_normal = math.floor(n * n / 2 - z * math.sqrt(n * n * (2 * n + 1) / 12))
        assert abs(k_normal - k) <= 1
        assert (low, high) == (differences[k_normal - 1], differences[n * n - k_normal])


def test_evidence_passes_its_confidence_on():
    rng = np.random.default_rng(6)
    base, new = runs(rng, 10.0, 0.1, 9), runs(rng, 10.0, 0.1, 9)
    wide, narrow = evidence(base, new), evidence(base, new, confidence=0.5)
    assert wide.ratio == narrow.ratio
    assert wide.ratio_low < narrow.ratio_low <= narrow.ratio <= narrow.ratio_high < wide.ratio_high


def test_hodges_lehmann_normal_interval_near_the_switch():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=EXACT_MAX_N), rng.normal(size=EXACT_MAX_N)
    _, low, high = hodges_lehmann(x, y)
    _, low_n, high_n = hodges_lehmann(np.append(x, 0.0), np.append(y, 0.0))
    assert low < 0 < high and low_n < 0 < high_n
    assert low_n == pytest.approx(low, rel=0.25) and high_n == pytest.approx(high, rel=0.25)


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, then max(0.06, 0.04 * 1)
    assert adjusted.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4]).tolist() == [0.8, 0.8]
    assert holm([0.9, 0.6]).tolist() == [1.0, 1.0]  # capped at 1
    # two of five tested here: the three others count, with p = 1
    assert holm([0.01, 0.002], family_size=5).tolist() == pytest.approx([0.04, 0.01])
    assert holm([]).tolist() == []
    with pytest.raises(ValueError, match="family_size 1 is smaller than the 2"):
        holm([0.1, 0.2], family_size=1)


def test_can_decide_and_runs_needed():
    # one-sided: 5 a side reach 1/252 < 0.01, 4 reach only 1/70
    assert can_decide(5, 5, 0.01) and not can_decide(4, 4, 0.01)
    assert runs_needed(0.01) == 5
    # 12 timings: Holm's first step is 0.01 / 12 = 0.00083; 6 a side give 1/924, 7 give 1/3432
    assert not can_decide(6, 6, 0.01, 12) and can_decide(7, 7, 0.01, 12)
    assert runs_needed(0.01, 12) == 7
    assert can_decide(1, 1, 0.6) and runs_needed(0.6) == 1
    assert not can_decide(1, 1, 0.5)  # strictly below: 1/2 is not < 0.5
    assert runs_needed(0.02) == 4  # 1/70 < 0.02, 1/20 is not
    assert can_decide(5, 5, 0.01, 0)  # a family of none counts as one


def runs(rng, center, spread, n=7):
    return center * np.exp(spread * rng.standard_normal(n))


def test_evidence_of_a_known_ratio():
    rng = np.random.default_rng(0)
    base = runs(rng, 10.0, 0.02, 9)
    e = evidence(base, base * 1.25)
    assert e.ratio == pytest.approx(1.25) and e.ratio_low < 1.25 < e.ratio_high
    assert e.basis == "runs" and (e.n_base, e.n_new) == (9, 9)
    assert e.base_median == pytest.approx(np.median(base)) and e.new_median == pytest.approx(np.median(base) * 1.25)
    assert e.p_worse == pytest.approx(1 / math.comb(18, 9)) and e.p_better == 1.0
    assert e.worse == pytest.approx(1.25)
    assert e.noise == pytest.approx(relative_spread(base))
    # higher is better (tokens per second): the same numbers are an improvement
    up = evidence(base, base * 1.25, lower_is_better=False)
    assert (up.p_worse, up.p_better) == (e.p_better, e.p_worse) and up.worse == pytest.approx(0.8)


def test_noise_comes_from_base_only_or_from_a_calibration():
    rng = np.random.default_rng(1)
    base = runs(rng, 10.0, 0.02)
    steady = evidence(base, runs(rng, 12.5, 0.02))
    noisy = evidence(base, runs(rng, 12.5, 0.3))  # slower AND noisier: must not raise its own bar
    assert steady.noise == noisy.noise == pytest.approx(relative_spread(base))
    assert evidence(base, base, noise=0.3).noise == 0.3


def test_decide_flags_a_clear_slowdown_and_a_clear_speedup():
    rng = np.random.default_rng(0)
    base = runs(rng, 10.0, 0.02)
    slow = decide(base, runs(rng, 12.5, 0.02))
    assert slow.status == "regressed" and slow.evidence.ratio == pytest.approx(1.25, rel=0.05)
    assert slow.p == pytest.approx(slow.evidence.p_worse)  # a family of one: Holm changes nothing
    fast = decide(base, runs(rng, 8.0, 0.02))
    assert fast.status == "improved" and fast.p == pytest.approx(fast.evidence.p_better)
    # higher is better (tokens per second): the same numbers read the other way
    assert decide(base, runs(rng, 12.5, 0.02), lower_is_better=False).status == "improved"
    assert decide(base, runs(rng, 8.0, 0.02), lower_is_better=False).status == "regressed"


def known(ratio=1.25, p_worse=1e-4, p_better=1.0, noise=0.0, basis="runs", lower_is_better=True):
    return Evidence(basis, 10, 10, 10.0, 10.0 * ratio, ratio, ratio * 0.9, ratio * 1.1, p_worse, p_better, noise,
                    lower_is_better)


def test_the_bar_is_min_effect_or_half_the_base_noise_whichever_is_larger():
    [d] = decide_all([known(1.0501)], min_effect=0.05)
    assert d.status == "regressed" and d.threshold == 0.05
    assert decide_all([known(1.05)], min_effect=0.05)[0].status == "unchanged"  # not beyond the bar
    [d] = decide_all([known(1.10, noise=0.3)], min_effect=0.05)
    assert d.threshold == pytest.approx(stats.NOISE_FACTOR * 0.3) == pytest.approx(0.15)
    assert d.status == "unchanged"
    assert decide_all([known(1.16, noise=0.3)])[0].status == "regressed"
    assert decide_all([known(1.16, noise=0.3)], noise_factor=1.0)[0].status == "unchanged"
    # the same bar for improvements, in log space: 1 / 1.16 is as far down as 1.16 is up
    assert decide_all([known(1 / 1.16, p_worse=1.0, p_better=1e-4, noise=0.3)])[0].status == "improved"
    assert decide_all([known(1 / 1.14, p_worse=1.0, p_better=1e-4, noise=0.3)])[0].status == "unchanged"


def test_significance_is_needed_whatever_the_ratio():
    [d] = decide_all([known(3.0, p_worse=0.011)], alpha=0.01)
    assert d.status == "unchanged" and d.p == 0.011
    assert decide_all([known(3.0, p_worse=0.0099)], alpha=0.01)[0].status == "regressed"
    assert decide_all([known(3.0, p_worse=0.01)], alpha=0.01)[0].status == "unchanged"  # strictly below alpha
    # an improvement needs its own one-sided p, not the other one
    assert decide_all([known(1 / 3, p_worse=1e-6, p_better=0.5)])[0].status == "unchanged"
    assert decide_all([known(3.0, p_worse=0.5, p_better=1e-6)])[0].status == "unchanged"


def test_holm_over_the_family():
    # p = 0.002 is significant alone, not as one of twelve timings (0.002 * 12 = 0.024)
    alone = decide_all([known(p_worse=0.002)])
    assert alone[0].status == "regressed" and alone[0].p == pytest.approx(0.002)
    family = decide_all([known(p_worse=0.002)] + [known(1.0, p_worse=0.5)] * 11)
    assert family[0].status == "unchanged" and family[0].p == pytest.approx(0.024)
    assert decide_all([known(p_worse=0.002)], family_size=12)[0].status == "unchanged"
    assert decide_all([known(p_worse=0.0008)], family_size=12)[0].status == "regressed"
    # improvements are corrected over the same family
    faster = known(1 / 1.25, p_worse=1.0, p_better=0.002)
    assert decide_all([faster])[0].status == "improved"
    [d] = decide_all([faster], family_size=12)
    assert d.status == "unchanged" and d.p == pytest.approx(0.024)
    # the smallest p is held to alpha / m, the next to alpha / (m - 1)
    two = decide_all([known(p_worse=0.003), known(p_worse=0.0049), known(1.0, p_worse=0.9)])
    assert [d.status for d in two] == ["regressed", "regressed", "unchanged"]
    assert [d.p for d in two][:2] == pytest.approx([0.009, 0.0098])
    assert decide_all([known(p_worse=0.004), known(p_worse=0.0049)] * 1 + [known(1.0, p_worse=0.9)])[0].p == \
        pytest.approx(0.012)


def test_shown_p_points_the_way_the_estimate_does():
    [worse] = decide_all([known(1.02, p_worse=0.3, p_better=0.8)])
    [better] = decide_all([known(0.98, p_worse=0.8, p_better=0.3)])
    [even] = decide_all([known(1.0, p_worse=0.6, p_better=0.7)])
    assert (worse.p, better.p, even.p) == (0.3, 0.3, 0.6)


def test_repeats_basis_says_only_likely_and_needs_a_larger_move():
    [d] = decide_all([known(1.19, basis="repeats")])
    assert d.status == "inconclusive" and d.threshold == stats.FALLBACK_MIN_EFFECT
    assert decide_all([known(1.21, basis="repeats")])[0].status == "likely regressed"
    assert decide_all([known(1 / 1.21, p_worse=1.0, p_better=1e-4, basis="repeats")])[0].status == "likely improved"
    assert decide_all([known(1.0, p_worse=0.5, basis="repeats")])[0].status == "inconclusive"


def test_the_improvement_bounds_are_strict():
    assert decide_all([known(1 / 3, p_worse=1.0, p_better=0.01)], alpha=0.01)[0].status == "unchanged"
    assert decide_all([known(1 / 3, p_worse=1.0, p_better=0.0099)], alpha=0.01)[0].status == "improved"
    # a ratio of exactly 1 / (1 + bar) is not beyond the bar
    assert decide_all([known(0.5, p_worse=1.0, p_better=1e-4)], min_effect=1.0)[0].status == "unchanged"
    assert decide_all([known(0.4999, p_worse=1.0, p_better=1e-4)], min_effect=1.0)[0].status == "improved"
    # the stricter floor never undercuts a larger min_effect or noise bar
    assert decide_all([known(1.25, basis="repeats")], min_effect=0.3)[0].threshold == 0.3
    assert decide_all([known(1.25, basis="repeats", noise=1.0)])[0].threshold == 0.5
    assert decide_all([known(1.25, basis="repeats")], fallback_min_effect=0.1)[0].status == "likely regressed"


def test_higher_is_better_reads_the_ratio_upside_down():
    assert decide_all([known(0.8, lower_is_better=False)])[0].status == "regressed"
    assert decide_all([known(1.25, p_worse=1.0, p_better=1e-4, lower_is_better=False)])[0].status == "improved"


def test_worth_confirming_leans_worse_by_more_than_min_effect():
    assert worth_confirming(known(1.06, p_worse=0.95 * stats.SCREEN_ALPHA), 0.05)
    assert not worth_confirming(known(1.06, p_worse=stats.SCREEN_ALPHA), 0.05)
    assert not worth_confirming(known(1.05, p_worse=0.01), 0.05)
    assert worth_confirming(known(1.05, p_worse=0.01), 0.04)
    assert not worth_confirming(known(0.8, p_worse=1.0, p_better=1e-4), 0.05)
    assert worth_confirming(known(1.06, p_worse=0.25), 0.05, screen_alpha=0.3)
    assert worth_confirming(known(0.9, lower_is_better=False, p_worse=stats.SCREEN_ALPHA / 2), 0.05)


def test_decide_passes_its_options_on():
    rng = np.random.default_rng(4)
    base = runs(rng, 10.0, 0.001)
    assert decide(base, base * 1.03).status == "unchanged"  # separated, but below the 5% minimum effect
    assert decide(base, base * 1.03, min_effect=0.01).status == "regressed"
    spread = np.array([10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0])  # relative IQR 1.5 / 11.5
    d = decide(spread, spread * 1.25)
    assert d.status == "regressed" and d.threshold == pytest.approx(0.5 * 1.5 / 11.5)
    assert decide(spread, spread * 1.25, noise_factor=2).status == "unchanged"  # bar 26%
    overlapping = base * np.array([1.2, 1.2, 1.2, 1.2, 1.2, 1.2, 0.9])  # one run in seven below
    assert decide(base, overlapping).status == "unchanged"  # p = 8 / 3432 > 0.001
    assert decide(base, overlapping, alpha=0.5).status == "regressed"
    assert decide(base, base * 1.3, basis="repeats").status == "likely regressed"
    assert decide(base, base * 1.3, lower_is_better=False).status == "improved"


def test_identical_runs_are_unchanged_and_two_runs_a_side_can_never_flag():
    rng = np.random.default_rng(2)
    base = runs(rng, 10.0, 0.05)
    assert decide(base, base).status == "unchanged"
    d = decide([1.0, 1.1], [5.0, 5.5])
    assert d.evidence.ratio > 4 and d.p > 0.01 and d.status == "unchanged"
