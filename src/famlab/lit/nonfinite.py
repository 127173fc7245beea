"""Detect NaN/Inf losses and gradients without a per-step host sync.

Every step, before the optimizer runs, the guard takes every gradient's 2-norm in one foreach call
(a NaN or Inf anywhere makes it non-finite, and so does a norm that overflows float32, entries
beyond ~1e19, which gradient clipping could not scale either) and writes the norms and the loss
into one row of a preallocated device buffer (``[check_every, parameters + 1]``): two ops whatever
the number of parameters. When the buffer is full, and whenever the flags are read, its rows are
reduced on the device into the first bad step and the first bad parameter. The host reads those
flags only every ``check_every`` steps and before any checkpoint is written, so ``last.ckpt``
always holds the last good state.

The 2-norms are the ones gradient clipping needs: they are handed to the module as ``_grad_norms``
(``{id(param): norm}``) and ``LitLM`` clips with them instead of reading every gradient again. (An
inf-norm's foreach kernel costs ~20x more on the CPU: ~2 ms a step for a 0.8M-parameter model.)

With several processes the decision is the same on every rank: the flags are reduced across ranks
when they are read (``stop``: every rank raises at the same check) or, under ``skip``, every step
(every rank skips the same steps, so replicas never diverge). A rank's own loss above ``max_loss``
therefore stops or skips all of them.

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


def _distributed(trainer) -> bool:
    """True when several processes train together (the flags must then be reduced across ranks)."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class NonFiniteGuard(pl.Callback):
    def __init__(self, policy: str = "stop", check_every: int = 10, max_loss: float | None = None):
        if policy not in ("stop", "skip"):
            raise ValueError(f"callbacks.nonfinite.policy must be 'stop' or 'skip', got {policy!r}")
        self.policy, self.check_every = policy, max(1, int(check_every))
        self.max_loss = None if max_loss is None else float(max_loss)
        self.first_step = self.first_param = self.skipped = None
        self._rows: torch.Tensor | None = None  # [check_every, P + 1]: per step, each gradient's 2-norm and the loss
        self._row_steps: list[int] = []  # the step of each filled row

    def setup(self, trainer, pl_module, stage=None) -> None:
        device = pl_module.device
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_param = torch.full((), -1, dtype=torch.long, device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.names = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        self._params: list[torch.nn.Parameter] | None = None
        self._rows, self._row_steps = None, []

    def on_train_start(self, trainer, pl_module) -> None:
        self._params = None  # collected at the first step, after the strategy has wrapped the module

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._params is None:
            self._params = [p for p in pl_module.parameters() if p.requires_grad]
            self._ids = [id(p) for p in self._params]
            device = self.first_step.device
            self._rows = torch.zeros(self.check_every, len(self._params) + 1, device=device)
            self._zero = torch.zeros((), device=device)  # the norm of a missing gradient, the loss before any
            self._row_steps = []
        params, rows = self._params, self._rows
        if len(self._row_steps) == len(rows):
            self._fold()
        loss = getattr(pl_module, "_last_loss", None)
        row = rows[len(self._row_steps)]
        with torch.no_grad():
            grads = [p.grad for p in params]
            if any(g is None for g in grads):  # only the gradients present this step are read
                present = [i for i, g in enumerate(grads) if g is not None]
                norms = torch._foreach_norm([grads[i] for i in present], 2) if present else []
                pl_module._grad_norms = {self._ids[i]: n for i, n in zip(present, norms)}
                column = [self._zero] * len(params)
                for i, n in zip(present, norms):
                    column[i] = n
            else:  # one 2-norm per gradient in one foreach call: NaN and Inf survive the sum
                column = norms = torch._foreach_norm(grads, 2)  # the call clip_grad_norm_ makes; clipping reuses them
                pl_module._grad_norms = dict(zip(self._ids, norms))
            values = [*column, self._zero if loss is None else loss.reshape(())]
            if all(t.dtype == row.dtype for t in values):
                torch.stack(values, out=row)  # the row: every gradient's norm, then the loss (one op)
            else:  # half-precision gradients: their norms cast to float32 at once (finiteness is kept)
                if column:
                    row[:-1].copy_(torch.stack([t.to(column[0].dtype) for t in column]))
                row[-1].copy_(values[-1])
        self._row_steps.append(int(trainer.global_step))
        if self.policy == "skip":  # decided at once: the buffer holds this step only
            bad = self._bad(rows[:1]).any()
            if _distributed(trainer):  # every rank skips the same steps
                bad = bad.to(torch.int32)
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if bool(bad):  # the one host read per step that skipping needs
                pl_module._grad_norms = None
                for p in params:
                    p.grad = None
                self.skipped += 1
            self._row_steps = []

    def _bad(self, rows: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: the rows with a non-finite norm or loss (or a loss above ``max_loss``)."""
        bad = ~rows.isfinite().all(dim=1)
        if self.max_loss is not None:
            bad |= rows[:, -1] > self.max_loss
        return bad

    def _fold(self) -> None:
        """Reduce the filled rows, on the device, into the first bad step and parameter (kept if one was
        already flagged) and empty the buffer."""
        n, steps = len(self._row_steps), self._row_steps
        if n == 0 or self._rows is None:
            return
        with torch.no_grad():
            rows = self._rows[:n]
            bad = self._bad(rows)
            first = bad.int().argmax()  # the first bad row (0 when none is)
            if steps == list(range(steps[0], steps[0] + n)):  # consecutive steps: no copy to the device
                step = first + steps[0]
            else:
                step = torch.tensor(steps, device=rows.device)[first]
            if rows.shape[1] > 1:
                grads_bad = ~rows[first, :-1].isfinite()
                param = torch.where(grads_bad.any(), grads_bad.int().argmax(), -1)
            else:  # no trainable parameter: only the loss can be bad
                param = torch.full_like(self.first_param, -1)
            new = bad.any() & (self.first_step < 0)
            self.first_step.copy_(torch.where(new, step, self.first_step))
            self.first_param.copy_(torch.where(new, param, self.first_param))
        self._row_steps = []

    def _reduced(self, trainer) -> tuple[int, int]:
        """(first bad step, first bad parameter) over all ranks: the earliest step any rank flagged,
        and the parameter a rank flagged at that step (-1: only a loss was bad)."""
        step, param = self.first_step, self.first_param
        if _distributed(trainer):
            dist = torch.distributed
            never = torch.iinfo(torch.long).max
            step = torch.where(step < 0, torch.full_like(step, never), step)
            dist.all_reduce(step, op=dist.ReduceOp.MIN)
            param = torch.where(self.first_step == step, param, torch.full_like(param, -1))
            dist.all_reduce(param, op=dist.ReduceOp.MAX)
            step = torch.where(step == never, torch.full_like(step, -1), step)
        return int(step), int(param)

    def check(self, trainer) -> None:
        """Host read of the device flags (reduced over ranks); raises NonFiniteError under policy=stop."""
        if self.first_step is None or self.policy != "stop":
            return
        self._fold()
        step, idx = self._reduced(trainer)
        if step >= 0:
            where = (
                f"first parameter with a non-finite gradient: {self.names[idx]}"
                if idx >= 0
                else "the loss was not finite (gradients were)"
                if self.max_loss is None
                else f"the loss was not finite or above callbacks.nonfinite.max_loss={self.max_loss:g}"
            )
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            kept = (
                f"the last good checkpoint is kept ({last})" if last.exists() else "no checkpoint had been written yet"
            )
            raise NonFiniteError(
                f"non-finite loss or gradient at step {step + 1}; {where}; {kept} "
                f"(callbacks.nonfinite.policy=skip skips such steps)"
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.check_every == 0:
            self.check(trainer)
            if self.policy == "skip":
                pl_module.log("nonfinite/skipped", self.skipped.float(), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check(trainer)  # never write a checkpoint taken after a non-finite step
