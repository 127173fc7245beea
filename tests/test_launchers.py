"""launcher=slurm_multigpu (N nodes x G GPUs, one task per GPU) and a sweep through submitit's local executor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from famlab import api
from famlab.errors import ConfigError
from famlab.run_dir import RunContext
from famlab_testing import REPO, TINY


def test_slurm_multigpu_shape_follows_the_trainer():
    cfg = api.compose(["launcher=slurm_multigpu", "trainer.num_nodes=3", "trainer.devices=8", "data.batch_size=48"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (3, 8, 8)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu" and cfg.resume == "auto"
    ctx = RunContext(run_dir=Path("unused"), multirun=True, launcher=launcher["_target_"])
    ctx.refuse_bad_launch(cfg)  # DDP under submitit is the supported multi-node path
    bad = api.compose(["launcher=slurm_multigpu", "trainer.num_nodes=3", "trainer.devices=8", "data.batch_size=50"])
    with pytest.raises(ConfigError, match="data.batch_size=50 must be divisible by the 24 processes"):
        ctx.refuse_bad_launch(bad)


def test_relaunching_strategy_is_refused_in_a_multirun_unless_submitit_starts_the_processes():
    cfg = api.compose(["trainer=ddp"])
    for launcher in ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", ""):
        with pytest.raises(ConfigError, match="trainer.strategy=ddp re-launches the command line"):
            RunContext(run_dir=Path("unused"), multirun=True, launcher=launcher).refuse_bad_launch(cfg)
    local = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    RunContext(run_dir=Path("unused"), multirun=True, launcher=local).refuse_bad_launch(cfg)


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "launcher=submitit_local",
            *TINY,
            "seed=0,1",
            f"out_root={tmp_path}",
            "sweep_name=s",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "train" / "multiruns" / "s"
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert sorted(s["seed"] for s in summaries) == [0, 1]
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # the jobs ran through submitit
