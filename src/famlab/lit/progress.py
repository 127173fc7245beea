"""``StepProgressBar``: one console line that counts optimizer steps.

    step 120/1000 [####-------------]  0:02:13 left | loss 2.345 val 2.401 7.1k tok/s

It reads plain Python numbers that :class:`~famlab.lit.module.LitLM` stores in ``pl_module.progress``
on its logging steps and after each validation (``loss``, ``tok/s``, ``val``), never
``trainer.progress_bar_metrics``, so drawing it converts no device tensor (no host sync). The line
is at most ``max_width`` (80) columns and never wraps. Without a terminal (a log file, a SLURM
job) it prints one plain line per validation instead of redrawing.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

import torch
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StepProgressBar(ProgressBar):
    """Optimizer steps done / ``trainer.max_steps``, remaining time, train loss, last val loss, tokens/s."""

    def __init__(self, refresh_rate: int = 10, max_width: int = 80, stream=None):
        super().__init__()
        if int(refresh_rate) < 1:
            raise ValueError(f"callbacks.progress_bar.refresh_rate must be an integer >= 1, got {refresh_rate}")
        self.refresh_rate, self.max_width = int(refresh_rate), int(max_width)
        self.stream = stream
        self._enabled = True
        self._t0: float | None = None
        self._step0 = 0
        self._drawn = False

    # --- ProgressBar interface ------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        self._newline()
        print(*args, sep=sep, file=self._out())

    # --- drawing ----------------------------------------------------------------------------------
    def _out(self):
        return self.stream or sys.stderr

    def _tty(self) -> bool:
        out = self._out()
        return bool(getattr(out, "isatty", lambda: False)())

    def width(self) -> int:
        return max(40, min(self.max_width, shutil.get_terminal_size((self.max_width, 24)).columns))

    def line(self, step: int, total: int, values: dict, elapsed: float, done_here: int) -> str:
        """The status line for ``step`` of ``total`` (``values``: loss, val, tok/s as floats)."""
        rate = done_here / elapsed if elapsed > 0 and done_here > 0 else None
        left = _fmt_time((total - step) / rate) if rate and total > 0 else "?"
        stats = []
        if "loss" in values:
            stats.append(f"loss {values['loss']:.3f}")
        if "val" in values:
            stats.append(f"val {values['val']:.3f}")
        if values.get("tok/s"):
            stats.append(f"{_fmt_rate(values['tok/s'])} tok/s")
        head = f"step {step}/{total} "
        tail = f" {left} left" + (" | " + " ".join(stats) if stats else "")
        room = self.width() - 1 - len(head) - len(tail) - 2
        if room >= 5:
            filled = int(room * step / total) if total > 0 else 0
            text = f"{head}[{'#' * filled}{'-' * (room - filled)}]{tail}"
        else:
            text = head + tail.lstrip()
        return text[: self.width() - 1]

    def _draw(self, trainer, pl_module, final: bool = False) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        step, total = int(trainer.global_step), int(trainer.max_steps or 0)
        elapsed = time.perf_counter() - (self._t0 or time.perf_counter())
        text = self.line(step, total, dict(getattr(pl_module, "progress", {}) or {}), elapsed, step - self._step0)
        out = self._out()
        if self._tty():
            out.write("\r" + text.ljust(self.width() - 1) + ("\n" if final else ""))
            self._drawn = not final
        else:
            out.write(text + "\n")
        out.flush()

    def _newline(self) -> None:
        if self._drawn and self._tty():
            self._out().write("\n")
            self._drawn = False

    # --- hooks ------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._step0 = time.perf_counter(), int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._tty() and trainer.global_step % self.refresh_rate == 0:
            self._draw(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        progress = getattr(pl_module, "progress", None)
        if progress and torch.is_tensor(progress.get("val")):  # one host read per validation, not per draw
            progress["val"] = float(progress["val"])
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._tty():
            self._draw(trainer, pl_module, final=True)
