"""Small-sample statistics for comparing runs over seeds (no scipy).

- ``student_t_cdf`` / ``student_t_ppf``: Student t distribution for any real ``df > 0`` via the
  regularized incomplete beta function (continued fraction, modified Lentz), inverted by bisection.
- ``mean_ci``: mean and two-sided confidence interval ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)``.
- ``welch_t_test``: unequal-variance t test with Welch-Satterthwaite degrees of freedom, two-sided
  p-value and a confidence interval for the difference of means ``mean(a) - mean(b)``.
- ``steps_to_target`` / ``time_to_target``: first crossing of a target on a logged curve.
- ``grid_variance``: optional Sheppard term for values read off a grid (the eval interval).

Undefined quantities (a CI from one value, a test with fewer than two values per arm) are NaN, never
zero, so callers cannot mistake "unknown" for "exact".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

NAN = float("nan")


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for no values."""
    vals = [float(v) for v in values]
    return sum(vals) / len(vals) if vals else NAN


def sample_variance(values: Sequence[float]) -> float:
    """Unbiased variance (ddof=1); NaN for fewer than two values."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return NAN
    m = mean(vals)
    return sum((v - m) ** 2 for v in vals) / (len(vals) - 1)


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); NaN for fewer than two values."""
    var = sample_variance(values)
    return math.sqrt(var) if var == var else NAN


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz), converges for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0:
        raise ValueError(f"incomplete beta needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete beta needs 0 <= x <= 1, got x={x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for T ~ Student t(df): ``I_{df/(df+t^2)}(df/2, 1/2)``."""
    if df <= 0:
        raise ValueError(f"Student t needs df > 0, got {df}")
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for T ~ Student t(df), df any positive real (Welch df are fractional)."""
    tail = 0.5 * student_t_sf_two_sided(t, df)
    return 1.0 - tail if t > 0 else tail


def student_t_ppf(p: float, df: float) -> float:
    """Quantile t with P(T <= t) = p, found by bracketing and bisection on ``student_t_cdf``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with a two-sided confidence interval [lo, hi] (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci_low": self.lo, "ci_high": self.hi}


def grid_variance(resolution: float) -> float:
    """Variance of a value known only to lie in an interval of width ``resolution`` (uniform):
    ``resolution^2 / 12`` (Sheppard). Steps to target are observed on the evaluation grid, so
    identical seeds do not mean zero uncertainty."""
    return float(resolution) ** 2 / 12.0 if resolution and math.isfinite(resolution) else 0.0


def mean_ci(values: Sequence[float], confidence: float = 0.95, resolution: float = 0.0) -> Estimate:
    """Mean and Student-t confidence interval of the finite values (None / NaN / inf are ignored).

    ``resolution`` > 0 adds ``grid_variance(resolution)`` to the per-value variance (df stay n - 1).
    """
    vals = _finite(values)
    n = len(vals)
    m, s = mean(vals), sample_std(vals)
    if n < 2:
        return Estimate(n, m, s, NAN, NAN)
    spread = math.sqrt(s * s + grid_variance(resolution))
    half = student_t_ppf(0.5 + confidence / 2.0, n - 1) * spread / math.sqrt(n)
    return Estimate(n, m, s, m - half, m + half)


@dataclass(frozen=True)
class WelchResult:
    """Welch test of mean(a) - mean(b): statistic, W-S df, two-sided p and a CI of the difference."""

    diff: float
    se: float
    df: float
    t: float
    p: float
    lo: float
    hi: float
    n_a: int
    n_b: int

    def as_dict(self) -> dict:
        return {
            "diff": self.diff,
            "se": self.se,
            "df": self.df,
            "t": self.t,
            "p": self.p,
            "ci_low": self.lo,
            "ci_high": self.hi,
            "n_a": self.n_a,
            "n_b": self.n_b,
        }


def welch_t_test(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    resolution_a: float = 0.0,
    resolution_b: float = 0.0,
) -> WelchResult:
    """Welch's unequal-variance t test on the finite values of ``a`` and ``b``.

    df = (va + vb)^2 / (va^2 / (na - 1) + vb^2 / (nb - 1)) with va = s_a^2 / na. ``resolution_*`` > 0
    adds ``grid_variance`` to that arm's per-value variance (values read off a grid, e.g. the eval
    interval for steps to target); 0 gives the plain Welch test. With fewer than two values in either
    arm everything but ``diff`` is NaN. With zero total variance in both arms the difference is exact:
    p = 1 if it is 0, else p = 0, and the CI collapses to the difference.
    """
    xa, xb = _finite(a), _finite(b)
    na, nb = len(xa), len(xb)
    diff = mean(xa) - mean(xb) if na and nb else NAN
    if na < 2 or nb < 2:
        return WelchResult(diff, NAN, NAN, NAN, NAN, NAN, NAN, na, nb)
    va = (sample_variance(xa) + grid_variance(resolution_a)) / na
    vb = (sample_variance(xb) + grid_variance(resolution_b)) / nb
    se = math.sqrt(va + vb)
    if se == 0.0:
        t = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return WelchResult(diff, 0.0, math.inf, t, 1.0 if diff == 0 else 0.0, diff, diff, na, nb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = diff / se
    p = student_t_sf_two_sided(t, df)
    half = student_t_ppf(0.5 + confidence / 2.0, df) * se
    return WelchResult(diff, se, df, t, p, diff - half, diff + half, na, nb)


def first_crossing(values: Sequence[float], target: float, maximize: bool = False) -> int | None:
    """Index of the first finite value <= target (>= target when ``maximize``), else None."""
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        if (v >= target) if maximize else (v <= target):
            return i
    return None


def steps_to_target(
    steps: Sequence[float], values: Sequence[float], target: float, maximize: bool = False
) -> float | None:
    """Step of the first evaluation whose value reaches ``target``; None if never reached."""
    i = first_crossing(values, target, maximize)
    return None if i is None else float(steps[i])


def interpolate_at(step: float, steps: Sequence[float], values: Sequence[float]) -> float | None:
    """Value of a logged series at ``step``: exact match (first one), else linear interpolation between
    the neighbouring logged steps, else None outside the logged range."""
    pairs = sorted((float(s), float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v)))
    for s, v in pairs:
        if s == step:
            return v
    for (s0, v0), (s1, v1) in zip(pairs, pairs[1:]):
        if s0 < step < s1:
            return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return None


def time_to_target(
    steps: Sequence[float],
    values: Sequence[float],
    target: float,
    elapsed_steps: Sequence[float],
    elapsed: Sequence[float],
    maximize: bool = False,
) -> float | None:
    """Elapsed seconds (``perf/elapsed_s``) at the first evaluation that reaches ``target``.

    The elapsed series is read at the crossing step (interpolated when it was logged on other rows);
    None when the target is never reached or no elapsed time covers that step.
    """
    step = steps_to_target(steps, values, target, maximize)
    if step is None:
        return None
    return interpolate_at(step, elapsed_steps, elapsed)
