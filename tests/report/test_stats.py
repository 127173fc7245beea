"""Statistics checked against published t-table values and independent numeric recomputation."""

import math

import pytest

from famlab.report.stats import (
    interpolate_at,
    mean_ci,
    regularized_incomplete_beta,
    sample_std,
    steps_to_target,
    student_t_cdf,
    student_t_ppf,
    time_to_target,
    welch_t_test,
)


def t_pdf(x, df):
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf_by_simpson(t, df, n=20000):
    """P(T <= t) = 1/2 + integral_0^t pdf (Simpson's rule): independent of the incomplete beta."""
    h = t / n
    total = t_pdf(0, df) + t_pdf(t, df)
    total += sum((4 if i % 2 else 2) * t_pdf(i * h, df) for i in range(1, n))
    return 0.5 + total * h / 3


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042), (120, 1.980)])
def test_t_quantile_matches_table(df, expected):
    assert student_t_ppf(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_other_levels_and_symmetry():
    assert student_t_ppf(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert student_t_ppf(0.95, 5) == pytest.approx(2.015, abs=5e-4)
    assert student_t_ppf(0.025, 4) == pytest.approx(-student_t_ppf(0.975, 4), abs=1e-12)
    assert student_t_ppf(0.5, 7) == 0.0
    # large df approaches the normal quantile
    assert student_t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    with pytest.raises(ValueError):
        student_t_ppf(1.0, 3)


@pytest.mark.parametrize("t, df", [(0.7, 1), (2.0, 3.5), (-1.3, 5.88), (3.0, 12)])
def test_t_cdf_matches_numeric_integration(t, df):
    sign = 1 if t >= 0 else -1
    expected = t_cdf_by_simpson(abs(t), df)
    expected = expected if sign > 0 else 1 - expected
    assert student_t_cdf(t, df) == pytest.approx(expected, abs=1e-9)


def test_cdf_and_ppf_are_inverse():
    for df in (1, 2.5, 9):
        for p in (0.6, 0.9, 0.999):
            assert student_t_cdf(student_t_ppf(p, df), df) == pytest.approx(p, abs=1e-11)


def test_incomplete_beta_closed_forms():
    for x in (0.1, 0.37, 0.9):
        assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-13)
        assert regularized_incomplete_beta(3, 1, x) == pytest.approx(x**3, abs=1e-13)
        assert regularized_incomplete_beta(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, abs=1e-13)
    assert regularized_incomplete_beta(2.5, 2.5, 0.5) == pytest.approx(0.5, abs=1e-13)
    with pytest.raises(ValueError):
        regularized_incomplete_beta(0, 1, 0.5)


def test_mean_ci_recomputed_by_hand():
    values = [2.0, 2.4, 1.9, 2.3]
    m = sum(values) / 4
    s = math.sqrt(sum((v - m) ** 2 for v in values) / 3)
    half = 3.182446305284263 * s / 2  # t_{0.975, 3}
    est = mean_ci(values)
    assert (est.n, est.mean, est.std) == (4, pytest.approx(m), pytest.approx(s))
    assert est.lo == pytest.approx(m - half, rel=1e-10)
    assert est.hi == pytest.approx(m + half, rel=1e-10)


def test_mean_ci_small_and_dirty_inputs():
    one = mean_ci([3.0])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.lo) and math.isnan(one.hi)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([]).mean)
    assert mean_ci([1.0, None, float("nan"), float("inf"), 3.0]).mean == 2.0
    assert math.isnan(sample_std([1.0]))


def test_welch_known_pair_matches_r():
    # R: t.test(c(1,2,3,4,5), c(2,4,6,8,10)) -> t = -1.8974, df = 5.8824, p-value = 0.1075,
    # 95% CI -6.887742 .. 0.887742
    res = welch_t_test([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    assert res.t == pytest.approx(-1.897367, abs=1e-6)
    assert res.df == pytest.approx(5.882353, abs=1e-6)
    assert res.p == pytest.approx(0.1075, abs=1e-4)
    assert (res.lo, res.hi) == (pytest.approx(-6.887742, abs=1e-5), pytest.approx(0.887742, abs=1e-5))


def test_welch_recomputed_independently():
    a, b = [1.51, 1.48, 1.55], [1.62, 1.70, 1.66, 1.59]
    ma, mb = sum(a) / 3, sum(b) / 4
    va = sum((x - ma) ** 2 for x in a) / 2 / 3
    vb = sum((x - mb) ** 2 for x in b) / 3 / 4
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    p = 2 * (1 - t_cdf_by_simpson(abs(t), df))
    res = welch_t_test(a, b)
    assert res.t == pytest.approx(t, rel=1e-12) and res.df == pytest.approx(df, rel=1e-12)
    assert res.p == pytest.approx(p, abs=1e-8)
    assert res.lo < res.diff < res.hi < 0


def test_welch_degenerate_cases():
    assert math.isnan(welch_t_test([1.0], [2.0, 3.0]).p)
    same = welch_t_test([2.0, 2.0], [2.0, 2.0])
    assert same.p == 1.0 and same.t == 0.0
    apart = welch_t_test([1.0, 1.0], [2.0, 2.0])
    assert apart.p == 0.0 and apart.lo == apart.hi == -1.0


def test_steps_and_time_to_target():
    steps, vals = [100, 200, 300, 400], [3.0, 2.4, 2.6, 2.0]
    assert steps_to_target(steps, vals, 2.5) == 200
    assert steps_to_target(steps, vals, 2.4) == 200  # <= target counts
    assert steps_to_target(steps, vals, 1.0) is None
    assert steps_to_target(steps, [0.1, 0.5, 0.9], 0.5, maximize=True) == 200
    # elapsed logged on other rows: exact match, then linear interpolation, else None
    assert time_to_target(steps, vals, 2.5, [100, 200], [10.0, 21.0]) == 21.0
    assert time_to_target(steps, vals, 2.5, [150, 250], [15.0, 25.0]) == pytest.approx(20.0)
    assert time_to_target(steps, vals, 2.5, [300], [30.0]) is None
    assert time_to_target(steps, vals, 1.0, [100], [1.0]) is None
    assert interpolate_at(5, [0, 10], [0.0, float("nan")]) is None


def test_grid_variance_widens_ci_and_welch():
    from famlab.report.stats import grid_variance

    assert grid_variance(100) == pytest.approx(10000 / 12) and grid_variance(0) == 0.0
    est = mean_ci([400, 400, 400], resolution=100)
    half = 4.302652729749411 * math.sqrt(10000 / 12) / math.sqrt(3)  # t_{0.975, 2}
    assert (est.lo, est.hi) == (pytest.approx(400 - half), pytest.approx(400 + half))
    res = welch_t_test([400, 400, 400], [500, 500, 500], resolution_a=100, resolution_b=100)
    se = math.sqrt(2 * 10000 / 12 / 3)
    assert res.se == pytest.approx(se) and res.df == pytest.approx(4.0)
    assert res.p == pytest.approx(2 * (1 - t_cdf_by_simpson(100 / se, 4.0)), abs=1e-8)
    assert 0.0 < res.p < 0.05
