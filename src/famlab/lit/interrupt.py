"""Stopping a run on purpose: at a chosen step (to test resume), or on SIGTERM (SLURM preemption).

``StopAtStep`` saves ``last.ckpt`` after the given optimizer step and ends ``fit`` as a
preemption would (no extra validation, no further logging); ``SaveOnSigterm`` turns SIGTERM into
"save ``last.ckpt`` now, then stop" the same way. Both raise :class:`Preempted`, which the
run wrapper records as status ``interrupted``.
"""
from __future__ import annotations

import signal
from pathlib import Path

import lightning.pytorch as pl


class Preempted(Exception):
    """Training stopped on purpose after a complete checkpoint was written."""


def _save_and_stop(trainer, why: str) -> None:
    trainer.save_checkpoint(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    raise Preempted(f"{why} at step {trainer.global_step}; continue with resume=auto")


class StopAtStep(pl.Callback):
    """Stop training once ``trainer.global_step >= step`` (after saving ``last.ckpt``)."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            _save_and_stop(trainer, "stopped by StopAtStep")


class SaveOnSigterm(pl.Callback):
    """On SIGTERM: finish the current step, write ``last.ckpt``, stop (status ``interrupted``)."""

    def __init__(self):
        self.requested = False

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            try:
                signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread (e.g. a joblib worker thread)
                pass

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested:
            self.requested = False
            _save_and_stop(trainer, "SIGTERM received")
