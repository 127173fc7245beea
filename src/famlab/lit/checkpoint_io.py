"""Crash-safe checkpoint files: write to ``<name>.tmp`` in the same folder, fsync, then rename.

A process killed while saving leaves at most a stray ``.tmp`` file; ``last.ckpt`` is either the
previous complete checkpoint or the new complete one, never half of one. Loading uses
``weights_only=True`` so a checkpoint from elsewhere cannot execute code.
"""
from __future__ import annotations

import os

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = str(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
