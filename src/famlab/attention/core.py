"""Shared attention plumbing: projections, head split, one mask convention, SDPA.

:class:`AttentionBase` is the skeleton most mixers (:mod:`famlab.attention.base`) build on.
Masks: boolean, ``True`` = may attend (as in ``F.scaled_dot_product_attention``). Convert any
other convention at the boundary.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(x: torch.Tensor, head: int) -> torch.Tensor:
    """``[B, T, H*hd] -> [B, H, T, hd]`` (a view)."""
    if x.dim() != 3 or x.shape[-1] % head:
        raise ValueError(
            f"split_heads: expected [B, T, H*hd] with H={head} dividing the last dim, got {tuple(x.shape)}"
        )
    return x.unflatten(-1, (head, x.shape[-1] // head)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, hd] -> [B, T, H*hd]``."""
    if x.dim() != 4:
        raise ValueError(f"merge_heads: expected [B, H, T, hd], got {tuple(x.shape)}")
    return x.transpose(1, 2).flatten(2)


def causal_mask(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """Boolean ``[Tq, Tk]`` mask, True where key position <= query position."""
    return k_positions[None, :] <= q_positions[:, None]


def attention_stats(scores: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attention entropy (nats) and largest logit of ``scores`` ``[B, H, Tq, Tk]``.

    These are the instability signals of Wortsman et al. (2024); both stay on device.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    logp = torch.log(probs.clamp_min(1e-30))
    entropy = -(probs * logp).sum(-1).mean()
    max_logit = scores.masked_fill(torch.isinf(scores), float("-inf")).amax()
    return entropy.detach(), max_logit.detach()


@lru_cache(maxsize=16)
def _causal_bias(tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """``[Tq, Tk]`` float32: 0 where query ``i`` may attend key ``j`` (``j <= i + Tk - Tq``), -inf elsewhere."""
    return torch.full((tq, tk), float("-inf"), device=device).triu_(tk - tq + 1)


def causal_attention_stats_(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_stats` of float32 ``scores`` ``[..., Tq, Tk]`` under the causal mask (query ``i``
    sees keys ``j <= i + Tk - Tq``), overwriting ``scores``. The same values (a masked-out ``-0.0``
    aside, which becomes ``+0.0``) with in-place ops and no boolean mask: the masked entries are
    zeroed by ``tril_`` and set to -inf by adding a cached bias, and the largest logit ignores
    infinities through ``nan_to_num_``."""
    tq, tk = scores.shape[-2:]
    scores.tril_(tk - tq).add_(_causal_bias(tq, tk, scores.device))
    probs = scores.softmax(dim=-1)
    entropy = -probs.clamp_min(1e-30).log_().mul_(probs).sum(-1).mean()
    max_logit = scores.nan_to_num_(nan=float("nan"), posinf=float("-inf"), neginf=float("-inf")).amax()
    return entropy, max_logit


class AttentionBase(nn.Module):
    """Multi-head attention skeleton: fused QKV projection, output projection, position scheme.

    Subclasses implement ``forward`` and reuse :meth:`project_qkv`, :meth:`attend` and
    :meth:`out`. ``record_stats`` is a plain Python flag the training loop turns on every N
    steps; while it is on, :meth:`attend` also computes the explicit attention matrix to record
    entropy and the largest logit into ``self._stats`` (device tensors, no host sync).
    """

    def __init__(self, dims: int, head: int, position: nn.Module | None = None, bias: bool = False):
        super().__init__()
        if dims <= 0 or head <= 0:
            raise ValueError(f"attention: dims and head must be positive, got dims={dims}, head={head}")
        if dims % head != 0:
            raise ValueError(f"attention: model.heads={head} must divide model.dims={dims}")
        self.dims, self.head, self.head_dim = dims, head, dims // head
        self.qkv = nn.Linear(dims, 3 * dims, bias=bias)
        self.proj = nn.Linear(dims, dims, bias=bias)
        if position is None:
            from famlab.position.none import NoPosition

            position = NoPosition(self.head_dim)
        self.position = position
        self.record_stats = False
        self._stats: dict[str, torch.Tensor] = {}

    def project_qkv(self, x: torch.Tensor, positions: torch.Tensor):
        """Project ``x`` ``[B, T, D]`` to rotated q, k and v, each ``[B, H, T, hd]``."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.head) for t in (q, k, v))
        q = self.position.rotate_qk(q, positions)
        k = self.position.rotate_qk(k, positions)
        return q, k, v

    def attend(self, q, k, v, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """SDPA with a boolean mask (True = attend) or ``is_causal``; records stats if asked."""
        if self.record_stats:
            self._record(q, k, mask, is_causal)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)

    def _record(self, q, k, mask, is_causal) -> None:
        with torch.no_grad():
            scores = (q @ k.transpose(-2, -1)).div_(math.sqrt(q.shape[-1])).float()  # a new tensor
            if mask is None and is_causal:
                entropy, max_logit = causal_attention_stats_(scores)
            else:
                entropy, max_logit = attention_stats(scores, mask)
        self._stats = {"attn/entropy": entropy, "attn/max_logit": max_logit}

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, hd] -> [B, T, D]`` through the output projection."""
        return self.proj(merge_heads(y))

    def metrics(self) -> dict[str, torch.Tensor]:
        """The statistics of the last recorded forward, handed out once (a skipped layer reports none)."""
        stats, self._stats = self._stats, {}
        return stats
