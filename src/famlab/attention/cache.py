"""Key/value cache for incremental decoding.

One :class:`KVCache` per layer. Keys are stored *after* the position scheme rotated them, so
a cached step only rotates the new token. Tensors are ``[B, H, T, hd]``.
"""

from __future__ import annotations

import torch


class KVCache:
    """Growing per-layer key/value store. ``extra`` holds variant-specific state."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.extra: dict = {}

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values along time and return the full cached tensors."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=-2)
            self.v = torch.cat([self.v, v], dim=-2)
        return self.k, self.v
