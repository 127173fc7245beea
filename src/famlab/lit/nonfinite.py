"""Detect NaN/Inf losses and gradients without a per-step host sync.

Every step, before the optimizer runs, the guard folds ``isfinite`` of the loss and of each
gradient's norm into device tensors (the first bad step and the first bad parameter). The host
reads them only every ``check_every`` steps and before any checkpoint is written, so
``last.ckpt`` always holds the last good state.

``policy``:
* ``stop`` (default): raise :class:`NonFiniteError` naming the step and the first parameter
  whose gradient was not finite; the run is recorded as ``diverged``.
* ``max_loss`` (optional): a finite training loss above it also counts as divergence (a run that
  "blows up" while gradient clipping keeps every number finite).
* ``skip``: drop the bad step's update (every gradient set to ``None``, so no optimizer moves a
  parameter or its state) and go on; costs one host read per step, and the count of skipped
  steps is logged as ``nonfinite/skipped``.
"""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch


class NonFiniteError(RuntimeError):
    pass


class NonFiniteGuard(pl.Callback):
    def __init__(self, policy: str = "stop", check_every: int = 10, max_loss: float | None = None):
        if policy not in ("stop", "skip"):
            raise ValueError(f"callbacks.nonfinite.policy must be 'stop' or 'skip', got {policy!r}")
        self.policy, self.check_every = policy, max(1, int(check_every))
        self.max_loss = None if max_loss is None else float(max_loss)
        self.first_step = self.first_param = self.skipped = None

    def setup(self, trainer, pl_module, stage=None) -> None:
        device = pl_module.device
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_param = torch.full((), -1, dtype=torch.long, device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.names = [n for n, p in pl_module.named_parameters() if p.requires_grad]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        loss = getattr(pl_module, "_last_loss", None)
        with torch.no_grad():
            finite = torch.stack([g.isfinite().all() if g is not None else torch.ones((), dtype=torch.bool,
                                  device=self.first_step.device) for g in (p.grad for p in params)])
            loss_ok = torch.ones((), dtype=torch.bool, device=finite.device) if loss is None else loss.isfinite()
            if loss is not None and self.max_loss is not None:
                loss_ok = loss_ok & (loss <= self.max_loss)
            bad = ~(finite.all() & loss_ok)
            first_bad = torch.where(finite.all(), torch.full_like(self.first_param, -1), (~finite).int().argmax())
            new = bad & (self.first_step < 0)
            self.first_step.copy_(torch.where(new, torch.full_like(self.first_step, trainer.global_step), self.first_step))
            self.first_param.copy_(torch.where(new, first_bad, self.first_param))
        if self.policy == "skip":
            if bool(bad):  # the one host read per step that skipping needs
                for p in params:
                    p.grad = None
                self.skipped += 1
                self.first_step.fill_(-1)

    def check(self, trainer) -> None:
        """Host read of the device flags; raises NonFiniteError under policy=stop."""
        if self.first_step is None or self.policy != "stop":
            return
        step = int(self.first_step)
        if step >= 0:
            idx = int(self.first_param)
            where = f"first parameter with a non-finite gradient: {self.names[idx]}" if idx >= 0 else \
                "the loss was not finite (gradients were)" if self.max_loss is None else \
                f"the loss was not finite or above callbacks.nonfinite.max_loss={self.max_loss:g}"
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            kept = f"the last good checkpoint is kept ({last})" if last.exists() else "no checkpoint had been written yet"
            raise NonFiniteError(f"non-finite loss or gradient at step {step + 1}; {where}; {kept} "
                                 f"(callbacks.nonfinite.policy=skip skips such steps)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.check_every == 0:
            self.check(trainer)
            if self.policy == "skip":
                pl_module.log("nonfinite/skipped", self.skipped.float(), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check(trainer)  # never write a checkpoint taken after a non-finite step
