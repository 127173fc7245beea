"""The two-stage lr protocol without hand edits: a fake stage-1 sweep -> ``famlab compare
--emit-best`` -> the stage-2 experiments read each arm's lr and the target; a winner at the edge of
its grid, a missing arm or a missing file stops stage 2 with one line before anything is written."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent / "report"))
from fake_runs import linear_curve, write_run  # noqa: E402

from famlab.api import compose  # noqa: E402
from famlab.compare import compare  # noqa: E402
from famlab.errors import ConfigError  # noqa: E402
from famlab.tuning import check_best_from  # noqa: E402
from famlab_testing import REPO, options  # noqa: E402

GRIDS = {
    "adamw": [1e-3, 3e-3, 1e-2],
    "adam": [1e-3, 3e-3, 1e-2],
    "fam_adam": [1e-3, 3e-3, 1e-2],
    "fam": [0.1, 0.3, 1.0],
    "fam_matched": [0.1, 0.3, 1.0],
    "fam_constant": [0.1, 0.3, 1.0],
}
ADAMW_SEEDS = [2.0, 2.1, 1.95]  # final losses of adamw's 3 seeds at its middle lr


def fake_stage1(root: Path, fam_best_point: int = 1) -> Path:
    """Every arm's grid with seed 0 (adamw with seeds 0-2); each arm's best lr is its middle point,
    fam's is ``fam_best_point``."""
    sweep, job = root / "lr", 0
    for arm, grid in GRIDS.items():
        best = fam_best_point if arm == "fam" else 1
        for i, lr in enumerate(grid):
            ends = ADAMW_SEEDS if arm == "adamw" else [2.2]
            for seed, end in enumerate(ends):
                write_run(sweep, str(job), arm, seed, lr=lr, curve=linear_curve(end if i == best else end + 0.4))
                job += 1
    return sweep


def emit(tmp_path: Path, fam_best_point: int = 1) -> Path:
    out = tmp_path / "best.yaml"
    compare(
        [fake_stage1(tmp_path, fam_best_point)],
        out=tmp_path / "rep",
        plots=False,
        emit_best=out,
        tuning={"target_arm": "adamw"},
    )
    return out


def test_stage1_feeds_stage2(tmp_path):
    best = emit(tmp_path)
    for arm, grid in GRIDS.items():
        if arm not in options("optimizer"):  # conf/optimizer/fam_matched.yaml comes with FAM's configurable table
            continue
        cfg = compose(["experiment=claim_convergence_cpu", f"optimizer={arm}", f"experiment_meta.best_from={best}"])
        assert cfg.optimizer.lr == grid[1]
    expected = statistics.median(4.0 + (end - 4.0) * 4 / 5 for end in ADAMW_SEEDS)  # val loss at step 400 of 500
    assert cfg.experiment_meta.target == pytest.approx(round(expected, 4))
    check_best_from(cfg)  # every swept arm present, none at an edge, the target present: no error


def test_gpu_tier_reads_the_same_file(tmp_path):
    arms = ["adamw", "adam", "sgd", "fam", "fam_adam", "fam_temporal", "fam_constant"]
    best = {
        "arm_key": "optimizer",
        "arms": {
            a: {"lr": 1e-3 * (i + 1), "grid": [1e-4, 1e-3 * (i + 1), 1.0], "at_edge": False, "edge": None}
            for i, a in enumerate(arms)
        },
        "target": {"value": 3.5},
    }
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(best))
    for i, arm in enumerate(arms):
        cfg = compose(["experiment=claim_convergence", f"optimizer={arm}", f"experiment_meta.best_from={path}"])
        assert cfg.optimizer.lr == pytest.approx(1e-3 * (i + 1)) and cfg.experiment_meta.target == 3.5
    check_best_from(cfg)
    assert "famlab.tuning.BestFromCheck" in OmegaConf.to_yaml(cfg.hydra.callbacks)


def test_missing_file_and_missing_arm_are_refused(tmp_path):
    cfg = compose(["experiment=claim_convergence_cpu", f"experiment_meta.best_from={tmp_path}/none.yaml"])
    with pytest.raises(ConfigError, match=r"none.yaml does not exist; run stage 1, then famlab compare"):
        check_best_from(cfg)
    best = yaml.safe_load(emit(tmp_path).read_text())
    del best["arms"]["fam_matched"]
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(best))
    cfg = compose(["experiment=claim_convergence_cpu", f"experiment_meta.best_from={tmp_path}/partial.yaml"])
    with pytest.raises(ConfigError, match=r"has no tuned lr for optimizer=fam_matched"):
        check_best_from(cfg)
    # a sweep of the other arms only needs no fam_matched
    check_best_from(
        compose(
            [
                "experiment=claim_convergence_cpu",
                "optimizer=adamw",
                f"experiment_meta.best_from={tmp_path}/partial.yaml",
            ]
        )
    )


def test_grid_edge_winner_stops_stage2_before_anything_is_written(tmp_path):
    best = emit(tmp_path, fam_best_point=2)  # fam's winner is its highest lr
    assert yaml.safe_load(best.read_text())["arms"]["fam"]["edge"] == "high"
    out = tmp_path / "outputs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=claim_convergence_cpu",
            f"out_root={out}",
            f"experiment_meta.best_from={best}",
            "sweep_name=s",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("famlab: error: experiment_meta.best_from: ")
    assert "optimizer=fam: best lr 1 is the highest point of its grid [0.1, 0.3, 1]; widen that grid" in lines[0]
    assert not out.exists()
