"""Position-scheme contract.

A position scheme is an ``nn.Module`` built by its config as a ``_partial_`` factory that
takes the head dimension as its first positional argument (``position(head_dim)``), one per attention layer. It implements::

    rotate_qk(t: Tensor[B, H, T, hd], positions: LongTensor[T]) -> Tensor[B, H, T, hd]

applied to queries and keys alike; ``positions`` are absolute token positions (``arange(T) +
offset`` in cached decoding). Optionally ``metrics() -> dict[str, Tensor]`` returns learned
values (keys ``"position/..."``) for logging every N steps.
"""

from __future__ import annotations

from typing import Protocol

import torch


class PositionScheme(Protocol):
    head_dim: int

    def rotate_qk(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...


def check_positions(t: torch.Tensor, positions: torch.Tensor | None, head_dim: int) -> torch.Tensor:
    """Validate ``t`` ``[B, H, T, head_dim]`` and its ``positions`` ``[T]`` (default ``arange(T)``)."""
    if t.shape[-1] != head_dim:
        raise ValueError(f"position: built for head dim {head_dim}, got tensor of shape {tuple(t.shape)}")
    if positions is None:
        return torch.arange(t.shape[-2], device=t.device)
    if positions.shape != (t.shape[-2],):
        raise ValueError(f"position: positions must be [T={t.shape[-2]}], got {tuple(positions.shape)}")
    return positions
