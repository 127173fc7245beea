"""Standard causal multi-head attention through ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch

from famlab.attention.cache import KVCache
from famlab.attention.core import AttentionBase, causal_mask


class StandardAttention(AttentionBase):
    """Causal MHA (``attention=standard``), the control every variant is compared with.

    ``x`` ``[B, T, dims]`` -> ``[B, T, dims]``. With a cache, new keys are appended and the
    queries attend causally over everything cached so far.
    """

    def __init__(self, dims: int, head: int, position=None, bias: bool = False):
        super().__init__(dims, head, position, bias=bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        q, k, v = self.project_qkv(x, positions)
        if cache is None:
            return self.out(self.attend(q, k, v, is_causal=True))
        past = len(cache)
        k, v = cache.append(k, v)
        if q.shape[-2] == 1:  # one new token attends to every cached key
            return self.out(self.attend(q, k, v))
        k_pos = torch.arange(k.shape[-2], device=x.device)
        mask = causal_mask(positions - positions[0] + past, k_pos)
        return self.out(self.attend(q, k, v, mask=mask))
