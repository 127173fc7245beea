"""Causal attention over block summaries: the sub-quadratic global branch of ``attention=integrated``.

The sequence is cut into blocks of ``block`` consecutive tokens (block ``b`` = token indices
``[b * block, (b + 1) * block)``); each block is compressed into one key/value pair, the mean of
its keys and of its values. Query ``i`` attends, in one softmax, to the summaries of the blocks
that are complete at ``i`` (``(b + 1) * block <= i + 1``: every token of the block is at or
before ``i``, so no token after ``i`` reaches position ``i``). A query before the end of the
first block (``i < block - 1``) has no complete block and gets a zero output (and zero gradient).

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


def block_means(t: torch.Tensor, block: int) -> torch.Tensor:
    """Means of the complete blocks of ``t`` along dim -2 (``T -> T // block``), e.g.
    ``[B, H, T, hd] -> [B, H, T // block, hd]`` or ``[B, T, D] -> [B, T // block, D]``."""
    n = t.shape[-2] // block
    return reduce(t[..., : n * block, :], "... (n s) d -> ... n d", "mean", s=block)


def complete_blocks(q_index: torch.Tensor, n_blocks: int, block: int) -> torch.Tensor:
    """Boolean ``[Tq, N]``: True where block ``b`` ends at or before query index ``q_index``."""
    ends = (torch.arange(n_blocks, device=q_index.device) + 1) * block
    return ends[None, :] <= q_index[:, None] + 1


def summary_attention(
    q: torch.Tensor,
    k_sum: torch.Tensor,
    v_sum: torch.Tensor,
    start: int,
    block: int,
    return_stats: bool = False,
):
    """Attention of each query over the summaries of the blocks complete at its index.

    ``q`` ``[B, H, Tq, hd]`` for the token indices ``start .. start + Tq - 1`` (``start`` = 0 for
    a whole sequence, the cache length when decoding); ``k_sum``, ``v_sum`` ``[B, H, N, hd]``
    summaries of blocks ``0 .. N-1``. Logits ``q.k / sqrt(hd)``. Rows without a complete block
    (indices below ``block - 1``, a prefix) are zero, with zero gradient. Returns
    ``[B, H, Tq, hd]`` (and, if ``return_stats``, detached ``(entropy, max_logit)``: mean entropy
    over the rows that have a block, largest unmasked logit, ``-inf`` when no row has one).
    """
    tq, n = q.shape[-2], k_sum.shape[-2]
    valid = complete_blocks(torch.arange(start, start + tq, device=q.device), n, block)
    logits = q @ (k_sum * (1.0 / math.sqrt(q.shape[-1]))).transpose(-2, -1)
    # a finite fill keeps rows without any complete block NaN-free; they are zeroed below
    probs = logits.masked_fill(~valid, torch.finfo(logits.dtype).min).softmax(dim=-1)
    out = probs @ v_sum
    empty = min(tq, max(0, block - 1 - start)) if n else 0  # n == 0: out is already all zero
    if empty:
        out[..., :empty, :] = 0.0  # the matmul does not keep its output for backward
    if not return_stats:
        return out
    with torch.no_grad():
        p = probs.float()
        rows = valid.any(-1)
        entropy_rows = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) * rows  # [B, H, Tq]
        entropy = entropy_rows.sum() / (rows.sum() * entropy_rows[..., 0].numel()).clamp_min(1)
        masked = logits.float().masked_fill(~valid, -math.inf).flatten()
        max_logit = torch.cat([masked, masked.new_full((1,), -math.inf)]).amax()  # defined when N = 0
    return out, (entropy, max_logit)
