"""Seeds an undecided verdict would need: the Welch half-width at n seeds per arm against the distance
to the nearest decision boundary, and the line the report prints."""

from __future__ import annotations

import math

import pytest

from famlab.report.power import decision_distance, seeds_to_decide
from famlab.report.stats import student_t_ppf


def test_decision_distance_to_the_nearest_boundary():
    assert decision_distance(0.20, 0.15, need_mean_effect=True) == pytest.approx(0.20)  # lower bound must clear 0
    assert decision_distance(0.05, 0.15, need_mean_effect=True) == pytest.approx(0.10)  # upper below min effect
    assert decision_distance(-0.05, 0.15, need_mean_effect=True) == pytest.approx(0.20)
    assert decision_distance(0.12, 0.15, need_mean_effect=False) == pytest.approx(0.12)  # ablation: clear 0


def test_seeds_to_decide_is_the_first_n_whose_half_width_fits():
    a, b = [1.0, 1.2, 0.9], [1.5, 1.1, 1.4]
    n = seeds_to_decide(a, b, distance=0.1)
    assert n is not None and n > 3

    def half(k):  # the Welch half-width with the observed spreads at k seeds per arm
        va, vb = _var(a) / k, _var(b) / k
        df = (va + vb) ** 2 / ((va**2 + vb**2) / (k - 1))
        return student_t_ppf(0.975, df) * math.sqrt(va + vb)

    assert half(n) < 0.1 <= half(n - 1)
    assert seeds_to_decide(a, b, distance=0.1, scale=2.0) < n  # a relative effect halves the width
    assert seeds_to_decide(a, b, distance=1e-9) is None  # beyond the cap
    assert seeds_to_decide([1.0], b, distance=0.1) is None  # no spread known for one arm
    assert seeds_to_decide([1.0, 1.0], [2.0, 2.0], distance=0.1) == 2  # no spread: decided already


def _var(x):
    m = sum(x) / len(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


def test_an_unclear_verdict_states_its_ci_width_and_the_seeds_it_would_need(tmp_path):
    from fake_runs import linear_curve, write_run

    from famlab.report.groups import group_runs
    from famlab.report.results import group_stats
    from famlab.report.runs import discover_runs
    from famlab.report.verdict import INCONCLUSIVE, evaluate_rule, format_verdict

    adam, fam = [2.0, 2.3, 1.8], [1.5, 2.0, 1.4]  # ~20% better on average, with a wide spread
    for opt, ends in (("adam", adam), ("fam", fam)):
        for seed, end in enumerate(ends):
            write_run(tmp_path, f"{opt}_{seed}", opt, seed, lr=1e-3, curve=linear_curve(end))
    stats = [group_stats(g) for g in group_runs(discover_runs([tmp_path]))]
    rule = {"claim": "c", "method": "optimizer=fam", "baseline": "optimizer=adam", "metric": "best_val_loss"}
    result = evaluate_rule({**rule, "direction": "lower", "min_effect": 0.15}, stats, "")
    base = result["comparisons"]["baseline"]
    assert result["verdict"] == INCONCLUSIVE and base["outcome"] == "unclear"
    assert base["ci_width"] == pytest.approx(base["ci"][1] - base["ci"][0])
    scale = sum(adam) / 3
    expected = seeds_to_decide(fam, adam, decision_distance(base["improvement"], 0.15, True), scale=scale)
    assert base["seeds_to_decide"] == expected and expected > 3
    assert f"CI width {base['ci_width'] * 100:.3g}%; at this effect and spread about {expected} seeds" in (
        format_verdict(result)
    )
