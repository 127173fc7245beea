"""``ModelCheckpoint``: Lightning's, with ``last.ckpt`` written at every save point.

Since Lightning 2.6 ``ModelCheckpoint(save_last=True)`` refreshes ``last.ckpt`` at a validation (or a
training epoch's end) only when that same validation also wrote a top-k checkpoint: a validation
whose monitored value is not in the top k leaves ``last.ckpt`` at an older step. famlab resumes
from ``last.ckpt`` (``resume=auto``), ``load_run(which="last")`` reads it and the summary points
at it as the end of training, so it must always be the latest step: a run whose final validation
was not its best would otherwise resume (or be loaded) from an earlier step. This subclass writes
``last.ckpt`` at every save point the parent skipped, as Lightning did before 2.6; everything else
(arguments, top-k, ``every_n_train_steps``, ``save_last="link"``) is the parent's.
"""

from __future__ import annotations

import lightning.pytorch as pl


class ModelCheckpoint(pl.callbacks.ModelCheckpoint):
    def _refresh_last(self, trainer: pl.Trainer) -> None:
        # the parent's save sets _last_global_step_saved to this step, so a save it made is not repeated
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
