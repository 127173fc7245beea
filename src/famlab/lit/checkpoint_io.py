"""Crash-safe checkpoint files: write to ``<name>.tmp`` in the same folder, fsync, then rename.

A process killed while saving leaves at most a stray ``.tmp`` file; ``last.ckpt`` is either the
previous complete checkpoint or the new complete one, never half of one. A save that fails (a
full disk) removes its ``.tmp`` file and raises (:class:`~famlab.lit.durable.DiskFull` when the
disk is full); ``last_step`` is the step of the last ``last.ckpt`` written. Loading uses
``weights_only=True`` so a checkpoint from elsewhere cannot execute code.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from famlab.lit.durable import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self):
        super().__init__()
        self.last_step: int | None = None

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = str(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        atomic_write(path, lambda f: torch.save(checkpoint, f))
        if os.path.basename(path) == "last.ckpt":
            self.last_step = int(checkpoint.get("global_step", 0))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
