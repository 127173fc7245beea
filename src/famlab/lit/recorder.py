"""``RunRecorder``: keeps the validation history and writes ``summary.json`` as training goes."""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl

from famlab.lit.step_timer import StepTimer
from famlab.lit.summary import update_summary


class RunRecorder(pl.Callback):
    """After every validation: best/final val loss, steps and time to the target, throughput."""

    def __init__(self, run_dir: str | Path, target: float | None = None, tokens_per_step: int = 0):
        self.run_dir, self.target, self.tokens_per_step = Path(run_dir), target, tokens_per_step
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        if "val/loss" not in metrics:
            return
        row = {
            "step": trainer.global_step,
            "val_loss": float(metrics["val/loss"]),
            "val_acc": float(metrics.get("val/acc", float("nan"))),
            "elapsed_s": pl_module.elapsed(),
        }
        if self.history and self.history[-1]["step"] == row["step"]:
            self.history[-1] = row
        else:
            self.history.append(row)
        update_summary(self.run_dir, **self.fields(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:  # in the process that trained (matters for ddp_spawn)
            update_summary(self.run_dir, **self.fields(trainer, pl_module))

    def fields(self, trainer: pl.Trainer, pl_module) -> dict:
        finite = [r for r in self.history if math.isfinite(r["val_loss"])]
        best = min(finite, key=lambda r: r["val_loss"]) if finite else None
        hit = next((r for r in self.history if self.target is not None and r["val_loss"] <= self.target), None)
        elapsed = pl_module.elapsed()
        steps = trainer.global_step
        fields = {
            "steps": steps,
            "tokens_seen": steps * self.tokens_per_step,
            "final_val_loss": self.history[-1]["val_loss"] if self.history else None,
            "final_val_acc": self.history[-1]["val_acc"] if self.history else None,
            "best_val_loss": best["val_loss"] if best else None,
            "best_val_step": best["step"] if best else None,
            "wall_time_s": elapsed,
            "tokens_per_s": steps * self.tokens_per_step / elapsed if elapsed > 0 else None,
            "optimizer_ms": optimizer_ms(trainer),
            "target": {
                "metric": "val/loss",
                "value": self.target,
                "step": hit["step"] if hit else None,
                "time_s": hit["elapsed_s"] if hit else None,
            },
            "val_history": self.history,
        }
        if fields["optimizer_ms"] is None:  # no step timed in this attempt (a relaunch of a finished run)
            del fields["optimizer_ms"]  # keep the previous attempt's figure
        return fields


def optimizer_ms(trainer: pl.Trainer) -> float | None:
    """The :class:`StepTimer` callback's mean update time over this attempt (None without one)."""
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, StepTimer)), None)
    return timer.optimizer_ms() if timer is not None else None
