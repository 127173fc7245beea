"""How many seeds an undecided comparison would need, at the spread and effect it showed.

A verdict rule is decided when the 95% CI of the improvement excludes the minimum effect in one
direction (see :func:`famlab.report.verdict.compare_arms`). For an undecided comparison the report
states the CI's width and the seeds per arm at which the Welch half-width,

    t_{0.975, df(n)} * sqrt((s_a^2 + g_a) / n + (s_b^2 + g_b) / n),

(``s``: per-seed standard deviations observed, ``g``: grid variance of values read off the eval
grid, ``df``: Welch-Satterthwaite with n per arm) falls below the distance between the observed
improvement and the nearest decision boundary. This is a planning figure (a post-hoc power
estimate at the observed effect), not a guarantee: a new batch of seeds moves the effect too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from famlab.report.stats import _finite, grid_variance, sample_variance, student_t_ppf

MAX_SEEDS = 1000


def decision_distance(improvement: float, min_effect: float, need_mean_effect: bool) -> float:
    """Half-width below which the CI becomes decisive, for an observed (relative) ``improvement``.

    ``improvement >= min_effect``: the lower bound must clear 0 (distance = improvement). Otherwise
    the upper bound must fall below ``min_effect`` ("not better": distance = min_effect - improvement)
    or, when the mean effect need not reach ``min_effect`` (an ablation), the lower bound may clear 0.
    """
    if improvement >= min_effect:
        return improvement
    distance = min_effect - improvement
    if not need_mean_effect and improvement > 0:
        distance = max(distance, improvement)
    return distance


def seeds_to_decide(
    a: Sequence[float],
    b: Sequence[float],
    distance: float,
    scale: float = 1.0,
    resolution_a: float = 0.0,
    resolution_b: float = 0.0,
    confidence: float = 0.95,
) -> int | None:
    """Smallest seeds per arm whose Welch half-width / ``scale`` is below ``distance``.

    ``a``, ``b``: per-seed values of the two arms (at least 2 finite each); ``scale``: the divisor of
    a relative effect (the baseline's mean), 1 for an absolute one. None when the spreads are unknown,
    ``distance`` is not positive or more than :data:`MAX_SEEDS` would be needed.
    """
    xa, xb = _finite(a), _finite(b)
    if len(xa) < 2 or len(xb) < 2 or not distance > 0 or not scale > 0:
        return None
    var_a = sample_variance(xa) + grid_variance(resolution_a)
    var_b = sample_variance(xb) + grid_variance(resolution_b)
    if var_a + var_b == 0:
        return max(len(xa), len(xb))
    for n in range(2, MAX_SEEDS + 1):
        va, vb = var_a / n, var_b / n
        df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
        half = student_t_ppf(0.5 + confidence / 2.0, df) * math.sqrt(va + vb) / scale
        if half < distance:
            return n
    return None
