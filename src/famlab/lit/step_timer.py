"""Training clocks: :class:`WallClock` (time spent training, across resumed attempts) and
:class:`StepTimer` (the ``perf/`` metrics and ``summary.json``'s ``optimizer_ms``).

Both read the host clock (``time.perf_counter``) and nothing else: no device tensor is read and no
device is synchronised, so on a GPU the update time is the time to launch its kernels unless
something else synchronises.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch
from torch.utils.hooks import RemovableHandle

from famlab.lit.mfu import mfu


class WallClock:
    """Seconds spent training: ``before`` (the earlier attempts', restored from the checkpoint) plus the
    time since :meth:`start` (0 before it is called)."""

    def __init__(self) -> None:
        self.before = 0.0
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self.started if self.started is not None else 0.0)


class StepTimer(pl.Callback):
    """Logs, every ``every_n_steps`` optimizer steps (default: the trainer's ``log_every_n_steps``):

    * ``perf/tokens_per_s``: ``pl_module.tokens_per_step`` times the optimizer steps since the previous
      logging step, over the wall time since then;
    * ``perf/optimizer_ms``: mean wall time of the parameter update over those steps: from this
      callback's ``on_before_optimizer_step`` (after the backward; callbacks listed after this one and
      the module's own hook are inside it) to the end of ``optimizer.step()``'s own work (clipping
      and the update, not the forward/backward closure that Lightning passes to ``optimizer.step()``);
    * ``perf/elapsed_s``: ``pl_module.elapsed()``, the wall time training across resumed attempts;
    * ``perf/mfu``: model FLOPs utilisation, when ``pl_module.peak_flops()`` knows the device's peak
      and ``pl_module.flops_per_token`` is set.

    With a module that has ``log_step_metrics`` (``LitLM``) the figures join the module's row of the
    step; otherwise they go through ``pl_module.log_dict``. The tokens/s figure also goes to
    ``pl_module.progress["tok/s"]`` for the progress bar.
    :meth:`optimizer_ms` is the update's mean over every step of this attempt (``summary.json``).
    """

    def __init__(self, every_n_steps: int | None = None):
        if every_n_steps is not None and int(every_n_steps) < 1:
            raise ValueError(f"callbacks.step_timer.every_n_steps must be an integer >= 1, got {every_n_steps}")
        self.every_n_steps = None if every_n_steps is None else int(every_n_steps)
        self._window_s, self._window_steps = 0.0, 0  # updates since the last logging step
        self._total_s, self._total_steps = 0.0, 0  # updates over this attempt
        self._update_start: float | None = None
        self._window_start: float | None = None
        self._logged_step = -1
        self._peak: float | None = None
        self._handles: list[RemovableHandle] = []

    # --- the update's clock --------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._window_start = time.perf_counter()
        self._window_s, self._window_steps = 0.0, 0
        peak = getattr(pl_module, "peak_flops", None)
        self._peak = peak() if callable(peak) else None
        self._remove_hooks()
        self._handles = [opt.register_step_post_hook(self._update_finished) for opt in trainer.optimizers]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._update_start = time.perf_counter()

    def _update_finished(self, optimizer, args, kwargs) -> None:
        if self._update_start is None:
            return
        dt = time.perf_counter() - self._update_start
        self._update_start = None
        self._window_s += dt
        self._window_steps += 1
        self._total_s += dt
        self._total_steps += 1

    def optimizer_ms(self) -> float | None:
        """Mean wall time of the parameter update over this attempt in ms (None: no update timed)."""
        return 1000.0 * self._total_s / self._total_steps if self._total_steps else None

    # --- logging -------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        every = self.every_n_steps or int(trainer.log_every_n_steps) or 1
        if step % every or step == self._logged_step:
            return
        self._logged_step = step
        now = time.perf_counter()
        seconds = max(now - (self._window_start or now), 1e-9)
        tokens = getattr(pl_module, "tokens_per_step", 0) * self._window_steps
        metrics = {
            "perf/tokens_per_s": tokens / seconds if self._window_steps else 0.0,
            "perf/optimizer_ms": 1000.0 * self._window_s / max(1, self._window_steps),
            "perf/elapsed_s": pl_module.elapsed(),
        }
        flops = getattr(pl_module, "flops_per_token", None)
        if self._peak and flops:
            metrics["perf/mfu"] = mfu(flops, metrics["perf/tokens_per_s"], self._peak)
        log_row = getattr(pl_module, "log_step_metrics", None)  # LitLM: one row per step, written by the module
        if callable(log_row):
            log_row(metrics)
        else:  # host (CPU) float32 tensors: a Python number would be copied to the module's device
            pl_module.log_dict(
                {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()},
                prog_bar=False,
                on_step=True,
                on_epoch=False,
            )
        progress = getattr(pl_module, "progress", None)
        if isinstance(progress, dict):
            progress["tok/s"] = metrics["perf/tokens_per_s"]
        self._window_s, self._window_steps, self._window_start = 0.0, 0, now

    # --- cleanup -------------------------------------------------------------------------------
    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._remove_hooks()
