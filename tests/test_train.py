"""End-to-end training through Lightning: run directory, exact resume, CLI, multirun."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from famlab import api
from famlab.errors import ConfigError
from famlab_testing import REPO, TINY


def _train(tmp_path, name, *overrides):
    cfg = api.compose([*TINY, f"run_name={name}", f"out_root={tmp_path}", *overrides], run_dir=tmp_path / name)
    return api.train(cfg)


def _weights(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {k: v for k, v in state["state_dict"].items()}


def test_run_directory_contract(tmp_path):
    summary = _train(tmp_path, "r")
    run = tmp_path / "r"
    for name in (
        "config.yaml",
        "overrides.yaml",
        "summary.json",
        "metrics.csv",
        "tokenizer.json",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).exists(), name
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["tokens_seen"] == 6 * 4 * 64
    assert summary["choices"]["optimizer"] == "adamw" and summary["seed"] == 0
    assert summary["final_val_loss"] == pytest.approx(summary["val_history"][-1]["val_loss"])
    assert summary["best_val_loss"] <= summary["final_val_loss"]
    # optimizer.step() alone, not forward + backward + step
    assert 0 < summary["optimizer_ms"] < 0.5 * 1000 * summary["wall_time_s"] / summary["steps"]
    assert summary["data"]["fingerprint"].endswith(f"py{sys.version_info.major}.{sys.version_info.minor}")
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for col in ("step", "train/loss", "val/loss", "val/bpc", "lr", "perf/tokens_per_s", "perf/optimizer_ms"):
        assert col in header, col
    assert any(c.startswith("attn/") for c in header)  # instability signals every N steps
    loaded = api.load_run(run)
    logits = loaded.model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, loaded.datamodule.vocab_size)


def test_optimizer_ms_times_the_update_not_the_forward_backward_closure(tmp_path, monkeypatch):
    """Lightning runs forward+backward inside optimizer.step(closure); a 40 ms forward must not count."""
    from famlab.model.transformer import TransformerLM

    forward = TransformerLM.forward

    def slow_forward(self, *args, **kwargs):
        if self.training:
            time.sleep(0.04)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TransformerLM, "forward", slow_forward)
    summary = _train(tmp_path, "slow")
    assert summary["wall_time_s"] / summary["steps"] > 0.04
    assert 0 < summary["optimizer_ms"] < 20  # AdamW on the tiny model: about 1 ms


def test_exact_resume_matches_uninterrupted(tmp_path):
    full = _train(tmp_path, "full", "trainer.max_steps=8", "trainer.val_check_interval=4")
    part = _train(
        tmp_path,
        "part",
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "+callbacks.stop.step=5",
        "+callbacks.stop._target_=famlab.lit.interrupt.StopAtStep",
    )
    assert part["status"] == "interrupted" and part["steps"] == 5
    resumed = _train(tmp_path, "part", "trainer.max_steps=8", "trainer.val_check_interval=4", "resume=auto")
    assert resumed["status"] == "completed" and resumed["steps"] == 8
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=1e-5)
    # metrics.csv keeps the first attempt's rows and drops those logged after its checkpoint
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    step_col = rows[0].split(",").index("step")
    steps = sorted({int(float(r.split(",")[step_col])) for r in rows[1:]})
    full_rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    assert steps == sorted({int(float(r.split(",")[step_col])) for r in full_rows[1:]})


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    """A sweep killed after its jobs finished is relaunched with resume=auto: a no-op for them."""
    first = _train(tmp_path, "r", "resume=auto")
    weights, metrics = _weights(tmp_path / "r"), (tmp_path / "r" / "metrics.csv").read_text()
    again = _train(tmp_path, "r", "resume=auto")
    assert again["status"] == "completed" and again["steps"] == first["steps"]
    for key in ("final_val_loss", "best_val_loss", "best_val_step", "val_history", "optimizer_ms", "tokens_seen"):
        assert again[key] == first[key], key
    assert (tmp_path / "r" / "metrics.csv").read_text() == metrics
    for k, v in _weights(tmp_path / "r").items():
        assert torch.equal(v, weights[k]), k


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    _train(tmp_path, "r")
    before = (tmp_path / "r" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(ConfigError, match="resume=auto"):
        _train(tmp_path, "r")
    assert (tmp_path / "r" / "checkpoints" / "last.ckpt").read_bytes() == before


def _cli(*args, cwd=REPO, timeout=600):
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_cli_prints_run_dir_and_final_loss(tmp_path):
    out = _cli(*TINY, f"out_root={tmp_path}", "run_name=cli")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"run directory: {tmp_path}/train/runs/cli" in out.stdout
    summary = json.loads((tmp_path / "train/runs/cli/summary.json").read_text())
    assert f"final val/loss: {summary['final_val_loss']}" in out.stdout


def test_cli_help_and_cfg_job():
    help_out = _cli("--help")
    assert help_out.returncode == 0 and "optimizer: " in help_out.stdout and "attention: " in help_out.stdout
    cfg_out = _cli("--cfg", "job", "optimizer=sgd", "model=tiny")
    assert cfg_out.returncode == 0 and "torch.optim" in cfg_out.stdout or "famlab.optim" in cfg_out.stdout
    assert "dims: 64" in cfg_out.stdout


def test_multirun_two_jobs_two_wandb_runs(tmp_path):
    tiny = [o for o in TINY if not o.startswith("logger")]
    out = _cli("-m", *tiny, "optimizer=adamw,sgd", "logger=wandb", f"out_root={tmp_path}", "sweep_name=s")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "train" / "multiruns" / "s"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert [j.name for j in jobs] == ["0", "1"]
    ids = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed"
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs
        ids.add(runs[0].name.rsplit("-", 1)[1])
    assert len(ids) == 2
    assert {json.loads((j / "summary.json").read_text())["choices"]["optimizer"] for j in jobs} == {"adamw", "sgd"}


def test_multirun_with_relaunching_ddp_is_refused(tmp_path):
    out = _cli("-m", *TINY, "trainer.strategy=ddp", "seed=0,1", f"out_root={tmp_path}", "sweep_name=s")
    summaries = list((tmp_path / "train" / "multiruns" / "s").glob("*/summary.json"))
    assert len(summaries) == 2
    for s in summaries:
        data = json.loads(s.read_text())
        assert data["status"] == "failed" and "ddp_spawn" in data["error"] and "launcher=slurm" in data["error"]
    assert not list((tmp_path / "train" / "multiruns" / "s").glob("*/checkpoints"))


def test_last_step_is_validated_and_checkpointed_when_off_the_interval(tmp_path):
    summary = _train(tmp_path, "odd", "trainer.max_steps=5", "trainer.val_check_interval=3")
    assert [h["step"] for h in summary["val_history"]] == [3, 5]
    assert summary["final_val_loss"] == summary["val_history"][-1]["val_loss"]
    assert torch.load(tmp_path / "odd/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5


def test_short_runs_need_no_extra_overrides():
    cfg = api.compose(["model=tiny", "trainer.max_steps=50"])
    assert cfg.trainer.val_check_interval == 50 and cfg.scheduler.warmup_steps == 5
    cfg = api.compose([])
    assert cfg.trainer.val_check_interval == 100 and cfg.scheduler.warmup_steps == 100
