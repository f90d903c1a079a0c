"""How sure a sweep table is: a confidence interval of each method's mean over
seeds, and a paired comparison of each method with a baseline over the seeds
both finished (same seed = same data split, order and initialisation of what
the two share), so a reader can tell a difference from seed noise.

scipy supplies the t distribution and the paired t-test; this module only
decides what is paired with what and when there is too little to say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


def confidence_interval(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (``None`` with fewer than two values)."""
    from scipy import stats

    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class PairedComparison:
    """A method against the baseline over the seeds both finished: the mean of the
    per-seed differences (method - baseline), the paired t-test's two-sided p-value
    (``None`` when it is undefined: fewer than two pairs, or every difference equal)."""

    difference: float
    p_value: float | None
    n: int


def paired_comparison(method: dict[int, float], baseline: dict[int, float]) -> PairedComparison | None:
    """``method`` and ``baseline`` map seed -> metric; ``None`` when they share no seed."""
    from scipy import stats

    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return None
    a, b = [method[s] for s in seeds], [baseline[s] for s in seeds]
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    p = None
    if len(seeds) >= 2 and max(diffs) - min(diffs) > 1e-12 * max(1.0, abs(mean)):
        p = float(stats.ttest_rel(a, b).pvalue)
    return PairedComparison(mean, p, len(seeds))
