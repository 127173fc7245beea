"""Causal attention over block summaries: the sub-quadratic global branch of ``attention=integrated``.

The sequence is cut into blocks of ``block`` consecutive tokens (block ``b`` = token indices
``[b * block, (b + 1) * block)``); each block is compressed into one key/value pair, the mean of
its (already position-rotated) keys and of its values. Query ``i`` attends, in one softmax, to

* the summaries of the blocks that are complete at ``i`` (``(b + 1) * block <= i + 1``: every
  token of the block is at or before ``i``, so no token after ``i`` reaches position ``i``), and
* its own key/value pair, so the set is never empty: a query before the end of the first block
  (``i < block - 1``) gets its own value ``v_i``, later ones mix ``v_i`` with the summaries.

Cost ``T * (T / block) * hd`` (one ``[Tq, N]`` score matrix, ``N`` = number of blocks) instead of
``T^2 * hd``. This follows compressive/landmark-style attention: a block mean stands for the
block, as in the mean-pooling compression of the Compressive Transformer (Rae et al. 2020), the
block landmarks of Mohtashami & Jaggi (2023) and the compression branch of Native Sparse
Attention (Yuan et al. 2025); unlike landmark attention it does not retrieve the tokens of the
chosen blocks (the caller's local branch covers the recent ones).
"""
from __future__ import annotations

import math

import torch
from einops import reduce

from famlab.attention.core import attention_stats


def block_means(t: torch.Tensor, block: int) -> torch.Tensor:
    """Means of the complete blocks of ``t`` ``[B, H, T, hd]`` -> ``[B, H, T // block, hd]``."""
    n = t.shape[-2] // block
    return reduce(t[..., : n * block, :], "b h (n s) d -> b h n d", "mean", s=block)


def complete_blocks(q_index: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    """Boolean ``[Tq, N]``: True where block ``b`` ends at or before query index ``q_index``."""
    ends = (torch.arange(n_blocks, device=q_index.device) + 1) * block
    return ends[None, :] <= q_index[:, None] + 1


def summary_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_sum: torch.Tensor,
    v_sum: torch.Tensor,
    q_index: torch.Tensor,
    block: int,
    return_stats: bool = False,
):
    """Attention of each query over the complete-block summaries plus its own key/value.

    ``q``, ``k``, ``v`` ``[B, H, Tq, hd]`` (``k``/``v`` are the queries' own keys/values);
    ``k_sum``, ``v_sum`` ``[B, H, N, hd]`` summaries of blocks ``0 .. N-1``; ``q_index`` LongTensor
    ``[Tq]`` of absolute token indices (``arange(T)`` for a whole sequence, offset by the cache
    length when decoding). Returns ``[B, H, Tq, hd]`` (and detached ``(entropy, max_logit)`` if
    ``return_stats``). Logits are ``q.k / sqrt(hd)``.
    """
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    logits = (q @ k_sum.transpose(-2, -1)).masked_fill(~complete_blocks(q_index, k_sum.shape[-2], block), -math.inf)
    own = (q * k).sum(-1, keepdim=True)
    scores = torch.cat([logits, own], dim=-1)  # [B, H, Tq, N + 1], the last column never masked
    probs = scores.softmax(dim=-1)
    out = probs[..., :-1] @ v_sum + probs[..., -1:] * v
    if not return_stats:
        return out
    with torch.no_grad():
        return out, attention_stats(scores.detach().float(), None)
