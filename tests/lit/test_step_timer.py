"""StepTimer: the perf/ metrics every N steps, summary.json's optimizer_ms, its optimizer hooks
removed after fit, and a run without it; WallClock across attempts."""

from __future__ import annotations

import csv
import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from famlab import api
from famlab.build import build_datamodule
from famlab.errors import ConfigError
from famlab.lit.module import LitLM
from famlab.lit.step_timer import StepTimer, WallClock
from famlab_testing import TINY


def _rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_timer_logs_every_n_steps_and_removes_its_hooks(tmp_path):
    cfg = api.compose(TINY)
    dm = build_datamodule(cfg)
    module = LitLM(
        api.build_model(cfg, vocab_size=dm.vocab_size),
        optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
        scheduler=None,
        total_steps=6,
        log_every_n_steps=2,
        tokens_per_step=int(dm.batch_size) * int(dm.context),
    )
    timer = StepTimer(every_n_steps=2)
    trainer = pl.Trainer(
        max_steps=6,
        limit_val_batches=0,
        callbacks=[timer],
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    rows = [r for r in _rows(tmp_path / "metrics.csv") if r.get("perf/tokens_per_s")]
    assert [int(r["step"]) for r in rows] == [1, 3, 5]  # Lightning's CSV step: optimizer steps done - 1
    assert all(float(r["perf/tokens_per_s"]) > 0 and float(r["perf/optimizer_ms"]) > 0 for r in rows)
    elapsed = [float(r["perf/elapsed_s"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0
    assert all(r["train/loss"] for r in rows)  # the module's metrics land in the same rows
    assert "perf/mfu" not in rows[0]  # no known peak on a CPU
    assert timer._total_steps == 6 and 0 < timer.optimizer_ms() < 1000 * module.elapsed() / 6
    assert module.progress["tok/s"] == pytest.approx(float(rows[-1]["perf/tokens_per_s"]), rel=1e-6)
    assert not trainer.optimizers[0]._optimizer_step_post_hooks  # removed at teardown


def test_a_run_without_the_timer_has_no_perf_metrics_but_trains(tmp_path):
    summary = api.train(api.compose([*TINY, "callbacks.step_timer=null"], run_dir=tmp_path / "r"))
    assert summary["status"] == "completed" and "optimizer_ms" not in summary
    rows = _rows(tmp_path / "r" / "metrics.csv")
    assert "train/loss" in rows[0] and "perf/tokens_per_s" not in rows[0] and "perf/optimizer_ms" not in rows[0]
    assert any(r.get("perf/elapsed_s") for r in rows)  # validation's wall time is the module's


def test_every_n_steps_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks.step_timer.every_n_steps must be an integer >= 1, got 0"):
        api.train(api.compose([*TINY, "callbacks.step_timer.every_n_steps=0"], run_dir=tmp_path / "r"))


def test_wall_clock_adds_the_earlier_attempts():
    clock = WallClock()
    clock.before = 5.0
    assert clock.elapsed() == 5.0  # not started: the earlier attempts only
    clock.start()
    time.sleep(0.01)
    assert 5.01 <= clock.elapsed() < 6.0


def test_training_rows_reach_the_loggers_and_the_monitors(tmp_path):
    """The module writes one row per logging step straight to the loggers (with Lightning's epoch
    column and step) and into trainer.callback_metrics, where ModelCheckpoint(monitor=train/loss) finds it."""
    cfg = api.compose(
        [*TINY, "log_every_n_steps=2", "callbacks.model_checkpoint.monitor=train/loss"], run_dir=tmp_path / "r"
    )
    assert api.train(cfg)["status"] == "completed"
    rows = [r for r in _rows(tmp_path / "r" / "metrics.csv") if r.get("train/loss")]
    assert [int(r["step"]) for r in rows] == [2, 4, 6] and all(r["epoch"] == "0" for r in rows)
    assert all(r["perf/tokens_per_s"] and r["lr"] and r["attn/l0.entropy"] for r in rows)  # one row per step
    assert list((tmp_path / "r" / "checkpoints").glob("best-*.ckpt"))
