"""``OptunaPruning``: the training job of a search reports ``val/loss`` to its own Optuna trial.

The sweeper (``hydra/sweeper=famlab_optuna``) passes each job ``optuna.storage``,
``optuna.study_name`` and ``optuna.trial`` (and its pruner config); this callback reopens that trial
from the shared storage with that pruner, reports the validation loss at each validation (step = optimizer step) and, when the
study's pruner says so, stops training. ``train.run`` then records the run as ``pruned`` in
``summary.json`` and the sweeper tells the study so. Without a trial (a plain run) it does nothing.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl


class OptunaPruning(pl.Callback):
    def __init__(
        self,
        storage: str | None = None,
        study_name: str | None = None,
        trial: int | None = None,
        pruner=None,
        monitor: str = "val/loss",
    ):
        self.storage, self.study_name, self.trial_number, self.monitor = storage, study_name, trial, monitor
        self.pruner = pruner  # an optuna pruner (the sweeper's); None: never prune
        self.pruned = False
        self.pruned_at: int | None = None
        self._trial = None

    @property
    def active(self) -> bool:
        return self.trial_number is not None and bool(self.storage) and bool(self.study_name)

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        if self.active and trainer.is_global_zero:
            from famlab.search import reopen_trial

            self._trial = reopen_trial(str(self.storage), str(self.study_name), int(self.trial_number), self.pruner)

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self.active or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        prune = False
        if trainer.is_global_zero and self._trial is not None and self.monitor in trainer.callback_metrics:
            value = float(trainer.callback_metrics[self.monitor])
            step = int(trainer.global_step)
            self._trial.report(value if math.isfinite(value) else float("inf"), step)
            prune = self._trial.should_prune() and step < int(trainer.max_steps)
        prune = trainer.strategy.reduce_boolean_decision(prune, all=False)  # every rank stops together
        if prune:
            self.pruned, self.pruned_at = True, int(trainer.global_step)
            trainer.should_stop = True
