"""Verdict outcomes on constructed run sets with known per-seed values."""

import pytest
from fake_runs import linear_curve, write_run

from famlab.report.groups import group_runs
from famlab.report.results import group_stats
from famlab.report.runs import discover_runs
from famlab.report.stats import welch_t_test
from famlab.report.verdict import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    collect_rules,
    evaluate_rule,
    format_verdict,
    validate_rule,
)

RULE = {
    "claim": "FAM gets lower loss than Adam",
    "method": "optimizer=fam",
    "baseline": "optimizer=adam",
    "metric": "best_val_loss",
    "direction": "lower",
    "min_effect": 0.15,
}


def stats_for(tmp_path, arms: dict, target=None, lrs=(1e-3,)):
    for opt, ends in arms.items():
        for lr in lrs:
            for seed, end in enumerate(ends):
                end = end(lr) if callable(end) else end
                write_run(tmp_path, f"{opt}_{lr}_{seed}", opt, seed, lr=lr, curve=linear_curve(end))
    return [group_stats(g, target=target) for g in group_runs(discover_runs([tmp_path]))]


def test_supported_with_ablation(tmp_path):
    stats = stats_for(
        tmp_path, {"adam": [2.0, 2.02, 1.98], "fam": [1.50, 1.52, 1.51], "fam_constant": [1.90, 1.95, 1.92]}
    )
    result = evaluate_rule({**RULE, "ablation": "optimizer=fam_constant"}, stats, "scale: x")
    assert result["verdict"] == SUPPORTED
    base = result["comparisons"]["baseline"]
    fam, adam = [1.50, 1.52, 1.51], [2.0, 2.02, 1.98]
    test = welch_t_test(fam, adam)
    assert base["improvement"] == pytest.approx(-test.diff / 2.0)
    assert base["ci"] == [pytest.approx(-test.hi / 2.0), pytest.approx(-test.lo / 2.0)]
    assert base["p"] == pytest.approx(test.p)
    assert result["comparisons"]["ablation"]["outcome"] == "better"
    assert "scale: 12.3k parameters" in result["scale"]
    assert "supported" in format_verdict(result) and "scale:" in format_verdict(result)


def test_not_supported_when_worse_than_baseline(tmp_path):
    stats = stats_for(tmp_path, {"adam": [1.50, 1.52, 1.51], "fam": [2.0, 2.02, 1.98]})
    assert evaluate_rule(RULE, stats, "")["verdict"] == NOT_SUPPORTED


def test_not_supported_when_effect_below_min_effect(tmp_path):
    # fam 5% better with a tight CI: significant, but the optimistic end is below 15%
    stats = stats_for(tmp_path, {"adam": [2.0, 2.01, 1.99], "fam": [1.90, 1.91, 1.89]})
    result = evaluate_rule(RULE, stats, "")
    assert result["comparisons"]["baseline"]["ci"][0] > 0
    assert result["verdict"] == NOT_SUPPORTED
    assert evaluate_rule({**RULE, "min_effect": 0.0}, stats, "")["verdict"] == SUPPORTED


def test_not_supported_when_ablation_is_as_good(tmp_path):
    stats = stats_for(
        tmp_path, {"adam": [2.0, 2.02, 1.98], "fam": [1.50, 1.52, 1.51], "fam_constant": [1.49, 1.51, 1.50]}
    )
    result = evaluate_rule({**RULE, "ablation": "optimizer=fam_constant"}, stats, "")
    assert result["comparisons"]["baseline"]["outcome"] == "better"
    assert result["comparisons"]["ablation"]["outcome"] == "not better"
    assert result["verdict"] == NOT_SUPPORTED


def test_inconclusive_wide_ci_and_single_seed(tmp_path):
    wide = stats_for(tmp_path / "w", {"adam": [2.0, 2.6, 1.5], "fam": [1.4, 2.3, 1.6]})
    assert evaluate_rule(RULE, wide, "")["verdict"] == INCONCLUSIVE
    single = stats_for(tmp_path / "s", {"adam": [2.0], "fam": [1.0]})
    result = evaluate_rule(RULE, single, "")
    assert result["verdict"] == INCONCLUSIVE
    assert any("fewer than 2 seeds" in r for r in result["reasons"])


def test_missing_arm_and_invalid_rule_are_inconclusive(tmp_path):
    stats = stats_for(tmp_path, {"adam": [2.0, 2.1], "fam": [1.0, 1.1]})
    missing = evaluate_rule({**RULE, "ablation": "optimizer=nope"}, stats, "")
    assert missing["verdict"] == INCONCLUSIVE and "missing arm" in missing["reasons"][-1]
    bad = evaluate_rule({**RULE, "metric": "vibes"}, stats, "")
    assert bad["verdict"] == INCONCLUSIVE and "invalid rule" in bad["reasons"][0]
    with pytest.raises(ValueError, match="'baseline'"):
        validate_rule({"method": "a=b", "metric": "best_val_loss"})
    with pytest.raises(ValueError, match="direction"):
        validate_rule({**RULE, "direction": "sideways"})


def test_steps_to_target_unreached_method_blocks_support(tmp_path):
    # target 2.3: adam (ends 2.4) never reaches it (censored at its 500-step budget); fam reaches it
    # at step 300 in four seeds and never in the fifth, so the censored CI alone would say "better"
    stats = stats_for(tmp_path, {"adam": [2.4, 2.4, 2.4], "fam": [1.0, 1.02, 1.04, 1.06, 2.5]}, target=2.3)
    rule = {**RULE, "metric": "steps_to_target", "min_effect": 0.0}
    result = evaluate_rule(rule, stats, "")
    assert result["comparisons"]["baseline"]["ci"][0] > 0
    assert result["verdict"] == INCONCLUSIVE
    assert any("1/5 method run(s) never reached" in r for r in result["reasons"])
    # fam reaching it in every seed, faster than adam: supported
    fast = stats_for(tmp_path / "f", {"adam": [2.0, 2.05, 1.95], "fam": [1.0, 1.05, 0.95]}, target=2.3)
    assert evaluate_rule(rule, fast, "")["verdict"] == SUPPORTED


def test_lr_sweep_arms_use_their_best_lr(tmp_path):
    arms = {
        "adam": [lambda lr: 2.0 if lr == 1e-3 else 3.0, lambda lr: 2.02 if lr == 1e-3 else 3.0],
        "fam": [lambda lr: 1.5 if lr == 3e-3 else 2.5, lambda lr: 1.52 if lr == 3e-3 else 2.5],
    }
    stats = stats_for(tmp_path, arms, lrs=(1e-3, 3e-3))
    result = evaluate_rule({**RULE, "min_effect": 0.1}, stats, "")
    assert result["comparisons"]["baseline"]["against"] == "optimizer=adam,optimizer.lr=0.001"
    assert result["verdict"] == SUPPORTED
    assert any("matched 2 groups" in r for r in result["reasons"])


def test_collect_rules_deduplicates(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"r{seed}", seed=seed, meta={"verdict": RULE})
    assert collect_rules(discover_runs([tmp_path])) == [RULE]


def test_identical_crossings_are_not_exact(tmp_path):
    # every fam seed crosses at eval 200, every adam seed at eval 300 (evals every 100 steps):
    # with 2 seeds the eval-grid variance leaves the CI straddling 0, with 4 it excludes 0
    rule = {**RULE, "metric": "steps_to_target", "min_effect": 0.0}
    two = stats_for(tmp_path / "two", {"adam": [2.0, 2.01], "fam": [1.2, 1.21]}, target=2.9)
    steps = {s.label: s.values("steps_to_target") for s in two}
    assert steps == {"optimizer=adam": [300, 300], "optimizer=fam": [200, 200]}
    assert evaluate_rule(rule, two, "")["verdict"] == INCONCLUSIVE
    four = stats_for(tmp_path / "four", {"adam": [2.0] * 4, "fam": [1.2] * 4}, target=2.9)
    result = evaluate_rule(rule, four, "")
    assert result["verdict"] == SUPPORTED and 0 < result["comparisons"]["baseline"]["p"] < 0.05


def test_unreached_target_in_every_lr_picks_best_val_loss(tmp_path):
    # target 1.0 reached by no run: steps_to_target (censored at the 500-step budget) ties across
    # lrs; the arm must not fall back to its first (worst) lr but to the best val loss
    arms = {
        "adam": [2.0, 2.02],
        "fam": [lambda lr: 3.0 if lr == 1e-3 else 2.5, lambda lr: 3.02 if lr == 1e-3 else 2.52],
    }
    stats = stats_for(tmp_path, arms, target=1.0, lrs=(1e-3, 3e-3))
    rule = {**RULE, "metric": "steps_to_target", "min_effect": 0.0}
    result = evaluate_rule(rule, stats, "")
    note = next(r for r in result["reasons"] if "'optimizer=fam' matched" in r)
    assert note.endswith("optimizer=fam,optimizer.lr=0.003")
    assert "none of which reached the target" in note and "best_val_loss" in note
    assert "best_val_loss" in format_verdict(result)


def test_tie_on_metric_is_broken_by_best_val_loss(tmp_path):
    # target 3.0: both fam lrs cross at step 300 (3.6, 3.2, 2.8 / 3.56, 3.12, 2.68); lr 3e-3 ends lower
    arms = {"adam": [2.0, 2.02], "fam": [lambda lr: 2.0 if lr == 1e-3 else 1.8, lambda lr: 2.0 if lr == 1e-3 else 1.8]}
    stats = stats_for(tmp_path, arms, target=3.0, lrs=(1e-3, 3e-3))
    steps = {s.label: s.values("steps_to_target") for s in stats}
    assert steps["optimizer=fam,optimizer.lr=0.001"] == steps["optimizer=fam,optimizer.lr=0.003"]
    result = evaluate_rule({**RULE, "metric": "steps_to_target"}, stats, "")
    note = next(r for r in result["reasons"] if "'optimizer=fam' matched" in r)
    assert "2 tie on steps_to_target" in note and note.endswith("optimizer=fam,optimizer.lr=0.003")
    # only the lr that reached the target competes (the other is censored at the same budget)
    mixed = stats_for(
        tmp_path / "m",
        {"adam": [2.0, 2.02], "fam": [lambda lr: 2.9 if lr == 1e-3 else 3.05, lambda lr: 2.9 if lr == 1e-3 else 3.05]},
        target=2.95,
        lrs=(1e-3, 3e-3),
    )
    picked = evaluate_rule({**RULE, "metric": "steps_to_target"}, mixed, "")
    assert any(r.endswith("best on steps_to_target: optimizer=fam,optimizer.lr=0.001") for r in picked["reasons"])
