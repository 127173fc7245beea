"""Stopping a run on purpose: at a chosen step (to test resume), or on SIGTERM (SLURM preemption).

``StopAtStep`` saves ``last.ckpt`` after the given optimizer step and ends ``fit`` as a
preemption would (no extra validation, no further logging); ``SaveOnSigterm`` turns SIGTERM into
"save ``last.ckpt`` now, then stop" the same way. Both raise :class:`Preempted`, which the
run wrapper records as status ``interrupted`` (:func:`preempted_message` also recognises it when a
spawned rank raised it and ``torch.multiprocessing`` re-raised it in the parent).

Alone, SIGTERM sets Lightning's own flag (``trainer.received_sigterm``) and ``SaveOnSigterm``
saves and stops at the end of that step. With several processes, ``SaveOnSigterm`` installs on
every rank a handler that only records the signal (and forwards it to child processes, as
Lightning's does), and every rank reduces that record with the others at the end of each step (one
one-element all-reduce on the module's device): all ranks then write ``last.ckpt`` together (a
collective) and stop at the same step, whichever rank was signalled. Lightning's own multi-process
handling cannot do this: its handler broadcasts from inside the signal handler (meeting whatever
collective the other ranks are in), and the signalled rank alone raises at the end of its step.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException


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
    """On SIGTERM: finish the current step, write ``last.ckpt``, stop (status ``interrupted``) on every rank."""

    def __init__(self):
        self.requested = False  # this rank got SIGTERM (several processes only)

    def on_train_start(self, trainer, pl_module) -> None:
        self.requested = False
        if _distributed():
            try:
                signal.signal(signal.SIGTERM, lambda signum, frame: self._handle(trainer, signum))
            except ValueError:  # not the main thread; Lightning's handler stays
                pass

    def _handle(self, trainer, signum) -> None:
        if not self.requested and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)  # the ranks this process started, if any
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _distributed():
            if trainer.received_sigterm:
                _save_and_stop(trainer, "SIGTERM received")
            return
        flag = torch.tensor([int(self.requested)], dtype=torch.int32, device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item():  # the same answer on every rank
            _save_and_stop(trainer, "SIGTERM received")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """One process: a SIGTERM during validation ends Lightning's loop before the step's end."""
        if isinstance(exception, SIGTERMException) and not _distributed() and trainer.global_step > 0:
            _save_and_stop(trainer, "SIGTERM received")


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def preempted_message(error: BaseException) -> str | None:
    """The message of a :class:`Preempted` stop, raised here or in a spawned rank (``ddp_spawn``
    re-raises a rank's exception in the parent as ``ProcessRaisedException`` with its traceback);
    None for any other error."""
    if isinstance(error, Preempted):
        return str(error)
    if isinstance(error, torch.multiprocessing.ProcessRaisedException):
        found = re.search(r"famlab\.lit\.interrupt\.Preempted: (.+)", str(error))
        return found.group(1).strip() if found else None
    return None
