"""Training metrics written straight to the loggers, one row per logging step.

Lightning's ``self.log`` keeps a result object per key and moves that object's whole state on
every call (~0.2 ms a key on a CPU), and walks every logged key again after every batch; a training
row of a dozen keys every 10 steps cost about 0.5 ms a step. :class:`StepRow` collects the row's
values from the module and its callbacks and hands them to every logger once, as Lightning's logger
connector does: the same keys and values (float32, or the tensor's own value), an ``epoch`` column,
the step Lightning passes while logging from ``on_train_batch_end`` (optimizer steps done - 1), and
``logger.save()`` after each write. The values also go into ``trainer.callback_metrics``, so a
monitor such as ``ModelCheckpoint(monitor="train/loss")`` still finds them.
"""

from __future__ import annotations

import numpy as np
import torch


def _scalar(value) -> float:
    """A logged value as the loggers receive it: a tensor's ``.item()`` (one host read), a Python
    number rounded to float32 (what ``self.log`` would have stored)."""
    if torch.is_tensor(value):
        return value.float().item()
    return float(np.float32(value))


class StepRow:
    """The metrics of the current training step's row: ``add`` them (module and callbacks), then
    ``write`` once."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def add(self, metrics: dict) -> None:
        self.values.update(metrics)

    def write(self, trainer) -> dict[str, float]:
        """Hand the collected metrics to every logger and to ``trainer.callback_metrics``; returns them
        as floats (nothing is written when none were added)."""
        if not self.values:
            return {}
        scalars = {k: _scalar(v) for k, v in self.values.items()}
        self.values = {}
        trainer.callback_metrics.update({k: torch.tensor(v, dtype=torch.float32) for k, v in scalars.items()})
        row = {**scalars, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(row, step=trainer.global_step - 1)
            logger.save()
        return scalars
