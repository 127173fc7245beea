"""``position=none``: no positional encoding (NoPE), the baseline every scheme is compared with."""

from __future__ import annotations

import torch
from torch import nn


class NoPosition(nn.Module):
    """Identity position scheme: causal attention alone must infer order."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim

    def rotate_qk(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return t
