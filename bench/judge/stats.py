"""The gate's decision rule, in one place (asv's `_stats.py`, pyperf's `compare_to`).

A timing metric is compared on ONE value per process run (the median of that run's repeats):
repeats inside a process share its luck (CPU frequency, cache state, a noisy neighbour), so
pooling them makes identical code look different. Across runs, `decide` asks two things:
1. is the difference significant? two-sided Mann-Whitney U on the per-run values, p < alpha;
2. is it large? the median moved by more than max(min_effect, noise_factor * noise), where
   noise is the larger relative interquartile range, (p75 - p25) / median, of either side's
   per-run values: the spread this very job saw between runs of identical code.
Both must hold. NOISE_FACTOR = 1.0: a move must exceed one whole IQR of the noisier side.

Mann-Whitney U is implemented here (no scipy): the exact permutation distribution of the rank
sum when both samples have at most EXACT_MAX_N values (ties kept exactly, as midranks, so the
test stays exact and conservative with ties), the normal approximation with tie correction and
continuity correction beyond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from math import comb

import numpy as np

EXACT_MAX_N = 20
NOISE_FACTOR = 1.0
STATUSES = ("regressed", "improved", "unchanged")


def midranks(values) -> np.ndarray:
    """Ranks 1..N of values, tied values sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def mann_whitney_u(x, y) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test: returns (U of x, p).

    U of x counts the pairs (x_i, y_j) with x_i > y_j, ties counting one half.
    """
    x = _finite("x", x)
    y = _finite("y", y)
    n1, n2 = len(x), len(y)
    ranks = midranks(np.concatenate([x, y]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    if np.all(ranks == ranks[0]):  # every value tied: no evidence either way
        return u1, 1.0
    if max(n1, n2) <= EXACT_MAX_N:
        return u1, _exact_p(ranks, n1)
    return u1, _normal_p(u1, n1, n2, ranks)


def _exact_p(ranks: np.ndarray, n1: int) -> float:
    """P(|R1 - E R1| >= observed) over all C(N, n1) equally likely splits of these ranks."""
    doubled = np.rint(2 * ranks).astype(np.int64)  # midranks are multiples of 1/2
    total = int(doubled.sum())
    # counts[k, s]: number of k-subsets of the ranks seen so far with doubled rank sum s.
    # float64 is exact here: C(40, 20) < 2**53.
    counts = np.zeros((n1 + 1, total + 1))
    counts[0, 0] = 1.0
    for d in doubled:
        counts[1:, d:] = counts[1:, d:] + counts[:-1, :total + 1 - d]
    n = len(ranks)
    mean_doubled = n1 * (n + 1)  # E[2 R1]
    observed = abs(int(doubled[:n1].sum()) - mean_doubled)
    sums = np.arange(total + 1)
    extreme = np.abs(sums - mean_doubled) >= observed
    return min(1.0, float(counts[n1, extreme].sum()) / comb(n, n1))


def _normal_p(u1: float, n1: int, n2: int, ranks: np.ndarray) -> float:
    n = n1 + n2
    _, tie_sizes = np.unique(ranks, return_counts=True)
    tie_term = float((tie_sizes ** 3 - tie_sizes).sum()) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = max(0.0, abs(u1 - n1 * n2 / 2) - 0.5) / sigma
    return min(1.0, math.erfc(z / math.sqrt(2)))


def min_attainable_p(n1: int, n2: int) -> float:
    """The smallest two-sided p Mann-Whitney can give for these sizes (no ties, exact)."""
    if n1 < 1 or n2 < 1:
        return 1.0
    return min(1.0, 2 / comb(n1 + n2, n1))


def relative_spread(values) -> float:
    """Interquartile range over the median: how much runs of the same code disagree."""
    values = _finite("values", values)
    p25, p50, p75 = np.percentile(values, [25, 50, 75])
    return float((p75 - p25) / abs(p50)) if p50 != 0 else 0.0


@dataclass(frozen=True)
class Decision:
    status: str  # one of STATUSES
    base_median: float
    new_median: float
    ratio: float  # new_median / base_median
    p: float
    threshold: float  # the relative move that had to be exceeded
    noise: float  # larger relative IQR of the two sides' per-run values


def decide(base, new, *, lower_is_better: bool = True, alpha: float = 0.01,
           min_effect: float = 0.05, noise_factor: float = NOISE_FACTOR) -> Decision:
    """Regressed / improved / unchanged, from one value per process run on each side."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_effect < 0:
        raise ValueError(f"min_effect must be >= 0, got {min_effect}")
    if noise_factor < 0:
        raise ValueError(f"noise_factor must be >= 0, got {noise_factor}")
    base = _finite("base", base)
    new = _finite("new", new)
    base_median, new_median = float(np.median(base)), float(np.median(new))
    if base_median > 0 and new_median > 0:
        ratio = new_median / base_median
    else:
        ratio = 1.0 if base_median == new_median else math.inf
    _, p = mann_whitney_u(base, new)
    noise = max(relative_spread(base), relative_spread(new))
    threshold = max(min_effect, noise_factor * noise)
    # Symmetric in log space: "worse" > 1 means new is worse, whatever the direction.
    worse = ratio if lower_is_better else (1 / ratio if ratio > 0 else math.inf)
    status = "unchanged"
    if p < alpha and worse > 1 + threshold:
        status = "regressed"
    elif p < alpha and worse * (1 + threshold) < 1:
        status = "improved"
    return Decision(status, base_median, new_median, ratio, p, threshold, noise)


def _finite(name: str, values) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {len(array)} values")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers, got {array.tolist()}")
    return array
