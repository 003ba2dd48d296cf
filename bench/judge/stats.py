"""The gate's decision rule, in one place (asv's `_stats.py`, pyperf's `compare_to`).

A timing is compared on ONE value per process run (the median of that run's repeats): repeats
inside a process share its luck (CPU frequency, cache state, a noisy neighbour), so pooling them
makes identical code look different. For each timing, `evidence` gives:
- one-sided Mann-Whitney p-values that NEW is worse, and that it is better (exact permutation
  distribution of the rank sum up to EXACT_MAX_N values a side, ties as midranks; the normal
  approximation with tie and continuity corrections beyond);
- the Hodges-Lehmann estimate of the ratio NEW / BASE (the median of all pairwise ratios) with
  its distribution-free CONFIDENCE interval (order statistics of the pairwise ratios, from the
  same rank-sum distribution);
- the noise: the relative interquartile range (p75 - p25) / median of BASE's values only, so a
  change that makes a timing slower and noisier does not raise its own bar.
Over all the timings of a comparison, `decide` calls a timing
- regressed if its Holm-adjusted p that NEW is worse is below alpha AND the estimated ratio is
  worse than 1 + max(min_effect, noise_factor * noise); improved likewise the other way;
  unchanged otherwise (Holm: the family-wise false-alarm rate stays below alpha over them all).
With too few runs for the per-run test to reach alpha (`can_decide`), the evidence comes from the
repeats inside the runs (basis "repeats"): they share a process's luck, so the verdicts are only
`likely regressed` / `likely improved` / `inconclusive`, and the effect must exceed
FALLBACK_MIN_EFFECT. No scipy: the distributions are counted here, and tested against brute force.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from math import comb
from statistics import NormalDist

import numpy as np

EXACT_MAX_N = 20
# A move must exceed half an interquartile range of BASE's runs (and min_effect): with the
# one-sided, Holm-corrected test doing the false-alarm control, a whole IQR cost a quarter of the
# power against a 25% slowdown at 15% noise (tests/test_stats_simulation.py measures both).
NOISE_FACTOR = 0.5
CONFIDENCE = 0.95  # of the Hodges-Lehmann interval shown beside each ratio
# Judged on repeats (too few runs): one process's luck moved a smoke case's median by up to 19%
# between runs on a 2-core machine, so only a move beyond 20% is called likely.
FALLBACK_MIN_EFFECT = 0.20
# The gate re-runs a timing whose first pass leans this way (one-sided p below SCREEN_ALPHA and a
# move beyond min_effect), then decides it on all its runs. Simulated (12 timings, 10 + 10 runs):
# 0.1 re-runs something in 57-70% of identical-code gates at 8-15% spread against 66-87% at 0.2,
# and catches a 25% slowdown as often (86% of 1000 gates at 15%); 0.05 costs power there (84%).
SCREEN_ALPHA = 0.1
DECIDED = ("regressed", "improved", "unchanged")
LIKELY = ("likely regressed", "likely improved", "inconclusive")
ALTERNATIVES = ("two-sided", "greater", "less")
BASES = ("runs", "repeats")


def midranks(values) -> np.ndarray:
    """Ranks 1..N of values, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # a block of ties spans ranks ends - counts + 1 .. ends
    return ((2 * ends - counts + 1) / 2)[inverse.ravel()]


def mann_whitney_u(x, y, alternative: str = "two-sided") -> tuple[float, float]:
    """Mann-Whitney U test: returns (U of x, p).

    U of x counts the pairs (x_i, y_j) with x_i > y_j, ties counting one half. "greater": the
    alternative that x tends to be larger than y; "less": smaller; "two-sided": either.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    u1, tails = _u_and_tails(_finite("x", x), _finite("y", y))
    return u1, tails[alternative]


def _u_and_tails(x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
    """U of x and the p-value of each alternative, from one ranking."""
    n1, n2 = len(x), len(y)
    ranks = midranks(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    if ranks.min() == ranks.max():  # every value tied: no evidence either way
        return u1, dict.fromkeys(ALTERNATIVES, 1.0)
    if max(n1, n2) <= EXACT_MAX_N:
        return u1, _exact_p(ranks, n1)
    return u1, _normal_p(u1, n1, n2, ranks)


def _rank_sum_counts(doubled: np.ndarray, n1: int) -> np.ndarray:
    """counts[s]: how many n1-subsets of these (doubled) ranks have doubled rank sum s."""
    total = int(doubled.sum())
    # counts[k, s]: k-subsets of the ranks seen so far with doubled rank sum s.
    # float64 is exact here: C(40, 20) < 2**53.
    counts = np.zeros((n1 + 1, total + 1))
    counts[0, 0] = 1.0
    for d in doubled:
        counts[1:, d:] = counts[1:, d:] + counts[:-1, :total + 1 - d]
    return counts[-1]


def _exact_p(ranks: np.ndarray, n1: int) -> dict[str, float]:
    """P(rank sum of x at least as extreme as observed) over all C(N, n1) equally likely splits."""
    doubled = np.rint(2 * ranks).astype(np.int64)  # midranks are multiples of 1/2
    n = len(ranks)
    if len(np.unique(doubled)) == n:  # no ties: the distribution depends on the sizes only
        counts = _untied_counts(n1, n - n1)
    else:
        counts = _rank_sum_counts(doubled, n1)
    observed = int(doubled[:n1].sum())
    mean_doubled = n1 * (n + 1)  # E[2 R1]
    sums = np.arange(len(counts))
    splits = comb(n, n1)
    # exact: the counts are whole numbers below 2**53, each tail at most all `splits` of them
    return {"greater": float(counts[observed:].sum()) / splits,
            "less": float(counts[:observed + 1].sum()) / splits,
            "two-sided": float(counts[np.abs(sums - mean_doubled) >= abs(observed - mean_doubled)].sum()) / splits}


def _normal_p(u1: float, n1: int, n2: int, ranks: np.ndarray) -> dict[str, float]:
    n = n1 + n2
    _, tie_sizes = np.unique(ranks, return_counts=True)
    tie_term = float((tie_sizes ** 3 - tie_sizes).sum()) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    shift = u1 - n1 * n2 / 2
    return {"greater": _upper_tail((shift - 0.5) / sigma), "less": _upper_tail((-shift - 0.5) / sigma),
            "two-sided": 2 * _upper_tail(max(0.0, abs(shift) - 0.5) / sigma)}  # z >= 0: at most 1


def _upper_tail(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def min_attainable_p(n1: int, n2: int, alternative: str = "greater") -> float:
    """The smallest p Mann-Whitney can give for these sizes (no ties, exact)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")
    splits = comb(n1 + n2, n1)  # 1 when a side is empty: p = 1
    return min(1.0, (2 if alternative == "two-sided" else 1) / splits)


def can_decide(n_base: int, n_new: int, alpha: float, family_size: int = 1) -> bool:
    """Whether the one-sided per-run test can reach Holm's first step, alpha / family_size."""
    return min_attainable_p(n_base, n_new) < alpha / max(1, family_size)


def runs_needed(alpha: float, family_size: int = 1) -> int:
    """The fewest runs a side (the same on both) with which `can_decide` holds."""
    n = 1
    while not can_decide(n, n, alpha, family_size):
        n += 1
    return n


def relative_spread(values) -> float:
    """Interquartile range over the median: how much runs of the same code disagree."""
    values = _finite("values", values)
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return float((p75 - p25) / abs(p50)) if p50 != 0 else 0.0


@functools.lru_cache(maxsize=512)
def _untied_counts(n1: int, n2: int) -> np.ndarray:
    """_rank_sum_counts of the ranks 1..n1+n2 (no ties), computed once per pair of sizes."""
    counts = _rank_sum_counts(2 * np.arange(1, n1 + n2 + 1), n1)
    counts.flags.writeable = False
    return counts


@functools.lru_cache(maxsize=512)
def _u_cdf(n1: int, n2: int) -> np.ndarray:
    """cdf[u] = P(U <= u) for U of n1 values against n2, no ties, under the null."""
    counts = _untied_counts(n1, n2)
    offset = n1 * (n1 + 1)  # doubled smallest rank sum
    by_u = counts[offset::2][: n1 * n2 + 1]
    return np.cumsum(by_u) / comb(n1 + n2, n1)


def _order_index(n1: int, n2: int, confidence: float) -> int:
    """k: the k-th smallest and k-th largest of the n1*n2 pairwise differences bound the
    two-sided `confidence` interval of the shift (below 1: no such interval with this few values)."""
    tail = (1 - confidence) / 2
    if max(n1, n2) <= EXACT_MAX_N:
        # the largest k with P(U <= k - 1) <= tail
        return int(np.searchsorted(_u_cdf(n1, n2), tail + 1e-12))
    z = NormalDist().inv_cdf(1 - tail)
    return math.floor(n1 * n2 / 2 - z * math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12))  # < 1: none


def hodges_lehmann(x, y, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Estimate of the shift y - x (median of all pairwise differences) with its interval.

    The interval's ends are -inf / inf when there are too few values for that confidence.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = _finite("x", x)
    y = _finite("y", y)
    differences = np.sort((y[None, :] - x[:, None]).ravel())
    estimate = float(np.median(differences))
    k = _order_index(len(x), len(y), confidence)
    if k < 1:
        return estimate, -math.inf, math.inf
    return estimate, float(differences[k - 1]), float(differences[len(differences) - k])


def holm(pvalues, family_size: int | None = None) -> np.ndarray:
    """Holm's step-down adjusted p-values; reject where adjusted < alpha.

    family_size > len(pvalues): the others were tested too, with p = 1 (not re-tested).
    """
    p = np.asarray(pvalues)
    m = len(p) if family_size is None else family_size
    if m < len(p):
        raise ValueError(f"family_size {m} is smaller than the {len(p)} p-values given")
    adjusted = np.empty(len(p))
    running = 0.0
    for rank, i in enumerate(np.argsort(p)):  # tied p-values end up equal whatever their order
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Evidence:
    """What one timing's values say, before the correction over all timings."""

    basis: str  # "runs": one median per process run; "repeats": every sample of every run
    n_base: int
    n_new: int
    base_median: float
    new_median: float
    ratio: float  # Hodges-Lehmann estimate of new / base
    ratio_low: float  # its CONFIDENCE interval
    ratio_high: float
    p_worse: float  # one-sided Mann-Whitney p that NEW is worse
    p_better: float  # ... that NEW is better
    noise: float  # BASE's relative IQR (or a stored A/A calibration): the bar's unit
    lower_is_better: bool = True

    @property
    def worse(self) -> float:
        """The estimated ratio read so that > 1 means NEW is worse, whatever the direction."""
        return self.ratio if self.lower_is_better else 1 / self.ratio


def evidence(base, new, *, lower_is_better: bool = True, basis: str = "runs", noise: float | None = None,
             confidence: float = CONFIDENCE) -> Evidence:
    """The tests and the estimate for one timing; values must be positive (ratios, in log space)."""
    if basis not in BASES:
        raise ValueError(f"basis must be one of {', '.join(BASES)}, got {basis!r}")
    base = _positive("base", base)
    new = _positive("new", new)
    _, tails = _u_and_tails(new, base)
    p_worse, p_better = (tails["greater"], tails["less"]) if lower_is_better else (tails["less"], tails["greater"])
    shift, low, high = hodges_lehmann(np.log(base), np.log(new), confidence)
    if noise is None:
        noise = relative_spread(base)
    elif not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    return Evidence(basis, len(base), len(new), float(np.median(base)), float(np.median(new)),
                    math.exp(shift), math.exp(low), math.exp(high), p_worse, p_better, float(noise),
                    lower_is_better)


@dataclass(frozen=True)
class Decision:
    status: str  # one of DECIDED (basis "runs") or LIKELY (basis "repeats")
    evidence: Evidence
    p: float  # Holm-adjusted one-sided p in the direction the estimate points
    threshold: float  # the relative move that had to be exceeded


def decide_all(evidences: list[Evidence], *, alpha: float = 0.01, min_effect: float = 0.05,
               noise_factor: float = NOISE_FACTOR, fallback_min_effect: float = FALLBACK_MIN_EFFECT,
               family_size: int | None = None) -> list[Decision]:
    """A verdict for each timing, Holm-corrected over the family (family_size: all timings the
    comparison tested, when only some are decided here)."""
    _check_options(alpha, min_effect, noise_factor)
    if not 0 <= fallback_min_effect:
        raise ValueError(f"fallback_min_effect must be >= 0, got {fallback_min_effect}")
    worse_p = holm([e.p_worse for e in evidences], family_size)
    better_p = holm([e.p_better for e in evidences], family_size)
    decisions = []
    for e, p_worse, p_better in zip(evidences, worse_p, better_p):
        floor = min_effect if e.basis == "runs" else max(min_effect, fallback_min_effect)
        threshold = max(floor, noise_factor * e.noise)
        words = DECIDED if e.basis == "runs" else LIKELY
        status = words[2]
        if p_worse < alpha and e.worse > 1 + threshold:
            status = words[0]
        elif p_better < alpha and e.worse * (1 + threshold) < 1:
            status = words[1]
        p = float(p_worse if e.worse >= 1 else p_better)
        decisions.append(Decision(status, e, p, threshold))
    return decisions


def decide(base, new, *, lower_is_better: bool = True, alpha: float = 0.01, min_effect: float = 0.05,
           noise_factor: float = NOISE_FACTOR, basis: str = "runs") -> Decision:
    """One timing on its own (a family of one)."""
    _check_options(alpha, min_effect, noise_factor)
    e = evidence(base, new, lower_is_better=lower_is_better, basis=basis)
    return decide_all([e], alpha=alpha, min_effect=min_effect, noise_factor=noise_factor)[0]


def worth_confirming(e: Evidence, min_effect: float, screen_alpha: float = SCREEN_ALPHA) -> bool:
    """The gate's first-pass screen: a timing that leans worse gets more runs before its verdict."""
    return e.p_worse < screen_alpha and e.worse > 1 + min_effect


def _check_options(alpha: float, min_effect: float, noise_factor: float):
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    if noise_factor < 0:
        raise ValueError(f"noise_factor must be >= 0, got {noise_factor}")


def _finite(name: str, values) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {len(array)} values")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {array.tolist()}")
    return array


def _positive(name: str, values) -> np.ndarray:
    array = _finite(name, values)
    if np.any(array <= 0):
        raise ValueError(f"{name} must be positive numbers (timings), got {array.tolist()}")
    return array
