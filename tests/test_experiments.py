"""The claim experiments (conf/experiment/*.yaml): every file composes into a runnable sweep with a
pre-registered hypothesis, control and verdict rule; one smoke sweep runs end to end through
``famlab compare``, whose numbers are recomputed here from the run directories."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from famlab.api import compose
from famlab.report.verdict import validate_rule
from famlab_testing import CONF, REPO, options

EXPERIMENTS = options("experiment")
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}
VERDICT_METRICS = (
    "final_val_loss",
    "best_val_loss",
    "steps_to_target",
    "time_to_target",
    "tokens_per_s",
    "optimizer_ms",
    "eval_loss@",
    "eval_accuracy@",
)
T_975 = {1: 12.706204736174698, 2: 4.302652729749464}  # Student t quantiles, two-sided 95%


def sweep_params(cfg) -> dict[str, list[str]]:
    return {str(k): str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


def test_every_claim_has_a_smoke_and_a_full_size():
    smoke = {e.removesuffix("_smoke") for e in EXPERIMENTS if e.endswith("_smoke")}
    assert smoke >= {"claim_convergence", "claim_stability", "claim_long_context", "claim_compute"}
    for name in smoke:
        assert name in EXPERIMENTS, f"{name}_smoke has no full-size counterpart"
    assert "claim_convergence_lr" in EXPERIMENTS  # stage 1 of the two-stage lr protocol


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_into_a_preregistered_sweep(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert "Hypothesis" in text and ("Decisive control" in text or "decisive control" in text)
    cfg = compose([f"experiment={name}"])
    assert cfg.task_name == cfg.experiment_meta.name == name
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = sweep_params(cfg)
    assert params.get("seed"), "every sweep varies the seed"
    for key in params:  # a group name or an existing config key: a typo would fail only at launch
        assert key in GROUPS or OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
        if key in GROUPS:
            assert set(params[key]) <= set(options(key)), (key, params[key])
    rules = cfg.experiment_meta.get("verdict")
    rules = [] if rules is None else OmegaConf.to_container(rules)
    rules = rules if isinstance(rules, list) else [rules]
    assert rules or cfg.experiment_meta.job_type == "lr_sweep"  # stage 1 only selects learning rates
    for rule in rules:
        rule = validate_rule(rule)
        assert rule["metric"].startswith(VERDICT_METRICS), rule["metric"]
        for role in ("method", "baseline", "ablation"):
            if role in rule:  # every arm a rule names is a value the sweep produces
                key, value = rule[role].split("=")
                assert value in params.get(key, [OmegaConf.select(cfg, f"hydra.runtime.choices.{key}")]), rule[role]
        if rule["metric"].endswith("_to_target"):  # a number, or the one stage 1 emitted (best_from)
            target = OmegaConf.to_container(cfg.experiment_meta, resolve=False)["target"]
            assert isinstance(target, float) or (cfg.experiment_meta.best_from and "famlab.best_target" in target)
    if name.endswith("_smoke"):  # CPU sized: the tiny model, CSV logging, a few hundred steps / <= 400k tokens per run
        assert cfg.hydra.runtime.choices.model == "tiny" and cfg.hydra.runtime.choices.logger == "csv"
        assert cfg.trainer.max_steps <= 600
        assert cfg.trainer.max_steps * cfg.data.batch_size * cfg.model.context <= 400_000
        assert cfg.experiment_meta.job_type == "smoke" and cfg.threads == 1
    else:
        assert "Expected time" in text


CPU_TIER = [
    "claim_convergence",
    "claim_stability",
    "claim_long_context",
    "claim_long_context_recall",
    "claim_param_handling",
    "claim_compute",
]


@pytest.mark.parametrize("claim", CPU_TIER)
def test_every_claim_has_a_cpu_tier_with_tuned_arms(claim):
    """The _cpu tier: model=small's depth, one thread, CSV, 1,000-3,000 steps, >= 3 seeds per arm, and
    each arm's lr either read from its stage-1 file (stage 2 refuses a grid-edge winner) or swept."""
    name = f"{claim}_cpu"
    cfg = compose([f"experiment={name}"])
    assert cfg.hydra.runtime.choices.model == "small" and cfg.model.layers == 4
    assert cfg.threads == 1 and cfg.hydra.runtime.choices.logger == "csv"
    assert 1000 <= cfg.trainer.max_steps <= 3000
    seeds = sweep_params(cfg)["seed"]
    assert len(seeds) >= 3
    raw = OmegaConf.to_container(cfg, resolve=False)
    if cfg.experiment_meta.get("best_from"):
        assert f"{name}_lr" in EXPERIMENTS
        assert "famlab.best_lr:${experiment_meta.best_from}" in raw["optimizer"]["lr"]
        assert raw["hydra"]["callbacks"]["best_from"]["_target_"] == "famlab.tuning.BestFromCheck"
        stage1 = compose([f"experiment={name}_lr"])
        assert stage1.experiment_meta.job_type == "lr_sweep" and not stage1.experiment_meta.get("best_from")
        assert not set(sweep_params(stage1)["seed"]) & set(seeds)  # the lrs were chosen on other seeds
        assert stage1.trainer.max_steps == cfg.trainer.max_steps and stage1.data.batch_size == cfg.data.batch_size
    else:  # the lr grid is the experiment (LR sensitivity): every arm at every lr
        assert len(sweep_params(cfg)["optimizer.lr"]) >= 5


@pytest.mark.parametrize("name", ["claim_convergence_lr", "claim_convergence_cpu_lr"])
def test_stage1_indexes_each_optimizers_own_grid(name):
    cfg = compose([f"experiment={name}"])
    meta = cfg.experiment_meta
    assert meta.tuning.target_arm == "adamw" and meta.tuning.min_seeds >= 3
    for optimizer in sweep_params(cfg)["optimizer"]:
        grid = dict(meta.lr_grid[optimizer])
        points = sweep_params(cfg)["lr_point"]
        assert list(grid) == points and list(grid.values()) == sorted(grid.values())
        got = [
            compose([f"experiment={name}", f"optimizer={optimizer}", f"lr_point={p}"]).optimizer.lr
            for p in (points[0], points[-1])
        ]
        grid = list(grid.values())
        assert got == [grid[0], grid[-1]]


def test_smoke_convergence_target_was_fixed_before_the_sweep():
    cfg = compose(["experiment=claim_convergence_smoke"])
    assert cfg.experiment_meta.target == 2.30
    assert cfg.experiment_meta.verdict.min_effect == 0.15
    assert "pilot" in (CONF / "experiment" / "claim_convergence_smoke.yaml").read_text()


def _mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval, computed here without famlab's stats module."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n - 1] * std / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.mark.slow
def test_compute_smoke_sweep_end_to_end(tmp_path):
    """A reduced claim_compute_smoke sweep (2 variants x 2 seeds x 12 steps) then famlab compare."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "train.py",
        "-m",
        "experiment=claim_compute_smoke",
        f"out_root={tmp_path}",
        "sweep_name=t",
        "trainer.max_steps=12",
        "trainer.val_check_interval=6",
        "scheduler.warmup_steps=2",
        "data.val_batches=2",
        "data.batch_size=4",
        "hydra.sweeper.params.attention='standard,adaptive_span'",
        "hydra.sweeper.params.seed='0,1'",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "claim_compute_smoke" / "multiruns" / "t"
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    summaries = [json.loads((p / "summary.json").read_text()) for p in jobs]
    assert all(s["status"] == "completed" and s["steps"] == 12 for s in summaries)
    assert all(s["verdict_rule"] and len(s["verdict_rule"]) == 12 for s in summaries)
    proc = subprocess.run(
        [sys.executable, "-m", "famlab.compare", str(sweep), "--out", str(tmp_path / "rep")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    md = (tmp_path / "rep" / "report.md").read_text()
    by_arm: dict[str, list[dict]] = {}
    for s in summaries:
        by_arm.setdefault(s["choices"]["attention"], []).append(s)
    assert sorted(len(v) for v in by_arm.values()) == [2, 2]
    groups = {g["label"]: g for g in report["groups"]}
    assert set(groups) == {"attention=standard", "attention=adaptive_span"}
    assert report["baseline"]["label"] == "attention=standard"
    for arm, runs in by_arm.items():
        est = groups[f"attention={arm}"]["estimates"]
        for key, field in (("final", "final_val_loss"), ("best", "best_val_loss"), ("tokens_per_s", "tokens_per_s")):
            mean, lo, hi = _mean_ci([r[field] for r in runs])
            assert est[key]["mean"] == pytest.approx(mean, rel=1e-9)
            assert est[key]["ci_low"] == pytest.approx(lo, rel=1e-6)
            assert est[key]["ci_high"] == pytest.approx(hi, rel=1e-6)
        assert f"{est['final']['mean']:.4g}"[:4] in md
    base = [r["final_val_loss"] for r in by_arm["standard"]]
    span = [r["final_val_loss"] for r in by_arm["adaptive_span"]]
    ratio = groups["attention=adaptive_span"]["ratios_vs_baseline"]["final"]["ratio"]
    assert ratio == pytest.approx(sum(span) / sum(base), rel=1e-9)
    # the pre-registered rules reach compare; only two arms ran, so the other variants' rules are inconclusive
    verdicts = {v["rule"]["claim"]: v for v in report["verdicts"]}
    assert len(verdicts) == 12 and "## Verdicts" in md
    missing = verdicts["integrated is >= 20% faster (tokens/s) than dense attention"]
    assert missing["verdict"] == "inconclusive" and any("missing arm" in r for r in missing["reasons"])
    span_rule = verdicts["adaptive_span reaches a lower val loss than dense attention"]
    base_best = sum(r["best_val_loss"] for r in by_arm["standard"]) / 2
    span_best = sum(r["best_val_loss"] for r in by_arm["adaptive_span"]) / 2
    assert span_rule["comparisons"]["baseline"]["improvement"] == pytest.approx(
        (base_best - span_best) / base_best, rel=1e-6, abs=1e-12
    )


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lr_sensitivity_is_the_capped_mean_gap_to_the_best_lr():
    sens = _script("lr_sensitivity")
    init = 4.0
    rows = [
        {"optimizer": "adamw", "lr": lr, "seed": seed, "loss": loss, "init": init}
        for seed, losses in ((0, (3.0, 2.0, 4.0)), (1, (3.5, 2.5, 4.0)))
        for lr, loss in zip((1e-3, 1e-2, 1e-1), losses)
    ]
    rows.append({"optimizer": "fam", "lr": 1.0, "seed": 0, "loss": 2.0, "init": init})
    out = sens.sensitivity(rows)
    # seed 0: mean(3, 2, 4) - 2 = 1; seed 1: mean(3.5, 2.5, 4) - 2.5 = 5/6; fam has a one-point grid -> 0
    assert out["adamw"] == pytest.approx([1.0, 5.0 / 6.0])
    assert out["fam"] == [0.0]


def test_best_lr_runs_picks_each_arms_lowest_mean():
    best = _script("best_lr_runs")

    def group(label, opt, mean):
        return {"label": label, "settings": {"optimizer": opt}, "estimates": {"best": {"mean": mean}}}

    report = {
        "groups": [
            group("a1", "adam", 2.5),
            group("a2", "adam", 2.3),
            group("f1", "fam", 2.9),
            group("f2", "fam", None),
        ]
    }
    assert best.best_groups(report, "optimizer", "best") == {"adam": "a2", "fam": "f1"}
