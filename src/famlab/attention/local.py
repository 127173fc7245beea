"""Causal attention over a bounded look-back: sliding windows and soft (adaptive) spans.

One formula serves every local variant. Query ``i`` may attend key ``j`` at distance
``d = i - j`` when ``0 <= d < window`` (hard band; ``window=None`` = unbounded) and, when a
``span`` ``z`` is given, the key is weighted by the soft ramp of Sukhbaatar et al. (2019),
``m(d) = clamp((ramp + z - d) / ramp, 0, 1)``, added to the scores as ``log m`` (identical to
multiplying the softmax weights by ``m`` and renormalising; ``m = 0`` -> key skipped). Logits are
``q.k / sqrt(hd) / temperature``. ``span`` and ``temperature`` broadcast to ``[B, H, Tq]`` (per
head, per sequence or per query), so gradients reach whatever produced them.

* :func:`blocked_attention` processes queries in blocks of ``block`` and gathers, per block, only
  the ``lookback + block`` keys that can be in range (an ``unfold`` view, no Python loop), so the
  cost is ``T * (lookback + block)`` instead of ``T^2``.
* :func:`sliding_window_attention` is the sliding-window case: blocks of the window size,
  keys = current + previous block, band ``[i - window + 1, i]``; no future key is ever visible.
  ``slide_win`` is its original name (docs/provenance.md §6), kept as an alias.
* :func:`dense_local_attention` is the same formula on an explicit ``[Tq, Tk]`` distance grid,
  used for cached decoding and as the reference in tests.
* :func:`flex_sliding_window_attention` is the FlexAttention version (block mask + score
  modifier) used on CUDA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from famlab.attention.local_flash import fused_blocked_attention, fused_supported

_NEG_INF = float("-inf")
_TINY = 1e-30


def _geometry_dtype(q: torch.Tensor) -> torch.dtype:
    """Distances and spans in at least float32 (bfloat16 is not exact beyond 256 tokens)."""
    return torch.promote_types(q.dtype, torch.float32)


def _per_query(t: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor | None:
    """Broadcast a scalar/``[B|1, H|1, Tq]`` tensor to a 3-D ``[B', H', Tq']`` tensor.

    Spans and temperatures keep at least float32 (bfloat16 rounds a span of 300 tokens to a
    multiple of 2 and the temperature ``1 + 0.01 (1 - s)`` to 1.0 or 1.0078)."""
    if t is None:
        return None
    t = torch.as_tensor(t, device=like.device)
    t = t.to(torch.promote_types(t.dtype, _geometry_dtype(like)))
    while t.dim() < 3:
        t = t.unsqueeze(0)
    return t


def _attend(q, k, v, dist, valid, span, ramp, temperature, stats: bool, first=None):
    """Masked soft-span softmax attention on any leading layout.

    ``q`` ``[..., Q, hd]``, ``k``/``v`` ``[..., K, hd]``; ``dist``/``valid`` ``[Q, K]`` (the same
    for every block); ``span``/``temperature`` broadcastable to ``[..., Q, 1]``. ``first`` =
    ``(nb, invalid [nb, Q, K])`` masks extra keys of the first ``nb`` blocks (dim -3).
    The scale and temperature are folded into ``q`` and the ramp into one additive bias, so the
    ``[..., Q, K]`` scores see one add, one softmax and the two products.
    Returns ``(out [..., Q, hd], (entropy_rows [..., Q], max_logit) | None)``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    # the temperature is float32 (or wider); the scaled queries keep q's dtype for the matmul
    q = (q * (scale / temperature)).to(q.dtype) if temperature is not None else q * scale
    logits = q @ k.transpose(-2, -1)
    if span is None:
        bias = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(~valid, _NEG_INF)
    else:
        ramp_mask = ((ramp + span - dist) / ramp).clamp(0.0, 1.0)
        bias = torch.where(valid & (ramp_mask > 0), torch.log(ramp_mask.clamp_min(_TINY)), _NEG_INF)
    scores = logits + bias
    if first is not None:
        nb, invalid = first
        scores[..., :nb, :, :] = scores[..., :nb, :, :].masked_fill(invalid, _NEG_INF)
    probs = scores.softmax(dim=-1)  # float32 at least when the ramp bias is float32 (bf16 inputs)
    out = probs.to(v.dtype) @ v
    info = None
    if stats:
        with torch.no_grad():
            entropy_rows = -(probs * torch.log(probs.clamp_min(_TINY))).sum(-1)
            max_logit = logits.masked_fill(torch.isinf(scores), _NEG_INF).amax()
        info = (entropy_rows, max_logit)
    return out, info


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block: int,
    lookback: int,
    window: int | None = None,
    span: torch.Tensor | float | None = None,
    ramp: float = 32.0,
    temperature: torch.Tensor | float | None = None,
    return_stats: bool = False,
    fused: bool | None = None,
):
    """Causal attention where query ``i`` sees at most keys ``[i - lookback, i]``.

    ``q, k, v`` ``[B, H, T, hd]`` -> ``[B, H, T, hd]`` (and ``(entropy, max_logit)`` detached if
    ``return_stats``). ``lookback`` must bound the reach of ``window``/``span`` (``window - 1`` or
    ``ceil(max span + ramp)``); keys further back are never computed. Queries are padded to a
    multiple of ``block``; the key windows are an ``unfold`` view of the left-padded keys.
    ``fused`` (None = on the CPU, without stats) runs the same
    computation through the fused CPU flash kernel (:mod:`famlab.attention.local_flash`).
    """
    if block <= 0 or lookback < 0:
        raise ValueError(f"blocked_attention: block must be > 0 and lookback >= 0, got {block}, {lookback}")
    if fused is None:
        fused = not return_stats and fused_supported(q)
    if fused:
        if return_stats:
            raise ValueError("blocked_attention: return_stats needs the unfused path (fused=False)")
        return fused_blocked_attention(
            q,
            k,
            v,
            block=block,
            lookback=lookback,
            window=window,
            span=_per_query(span, q),
            ramp=ramp,
            temperature=_per_query(temperature, q),
        )
    T = q.shape[-2]
    block = min(block, T)
    n = -(-T // block)
    pad_t = n * block - T
    lookback = min(lookback, (n - 1) * block)  # no block ever needs more
    width = lookback + block
    k_pad = F.pad(k, (0, 0, lookback, pad_t))
    v_pad = F.pad(v, (0, 0, lookback, pad_t))
    k_win = k_pad.unfold(-2, width, block).transpose(-1, -2)  # [B, H, n, width, hd]
    v_win = v_pad.unfold(-2, width, block).transpose(-1, -2)
    q_blk = rearrange(F.pad(q, (0, 0, 0, pad_t)), "b h (n s) d -> b h n s d", s=block)

    device = q.device
    a = torch.arange(block, device=device)
    c = torch.arange(width, device=device)
    dist = (a[:, None] + lookback - c[None, :]).to(_geometry_dtype(q))  # [block, width], same for every block
    valid = dist >= 0
    if window is not None:
        valid = valid & (dist < window)
    nb = min(n, -(-lookback // block))  # blocks whose look-back reaches before key 0
    first = None
    if nb > 0:
        q_pos = torch.arange(nb * block, device=device).view(nb, block, 1)
        first = (nb, dist > q_pos)  # key index j = i - d would be negative (padding)

    def to_blocks(t):
        t = _per_query(t, q)
        if t is None:
            return None
        if t.shape[-1] > 1:
            t = F.pad(t, (0, pad_t), value=1.0)
            return rearrange(t, "b h (n s) -> b h n s 1", s=block)
        return t[..., None, None]  # [B', H', 1, 1, 1]

    out, info = _attend(
        q_blk, k_win, v_win, dist, valid, to_blocks(span), ramp, to_blocks(temperature), return_stats, first
    )
    out = rearrange(out, "b h n s d -> b h (n s) d")[..., :T, :]
    if not return_stats:
        return out
    entropy_rows = rearrange(info[0], "b h n s -> b h (n s)")[..., :T]
    return out, (entropy_rows.mean(), info[1])


def dense_local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    k_positions: torch.Tensor,
    *,
    window: int | None = None,
    span: torch.Tensor | float | None = None,
    ramp: float = 32.0,
    temperature: torch.Tensor | float | None = None,
    return_stats: bool = False,
):
    """Reference/decoding path: the same rule on an explicit ``[Tq, Tk]`` distance grid.

    ``q`` ``[B, H, Tq, hd]``, ``k, v`` ``[B, H, Tk, hd]``, positions LongTensors ``[Tq]``/``[Tk]``.
    """
    dist = (q_positions[:, None] - k_positions[None, :]).to(_geometry_dtype(q))
    valid = dist >= 0
    if window is not None:
        valid = valid & (dist < window)
    sp, tp = _per_query(span, q), _per_query(temperature, q)
    out, info = _attend(
        q,
        k,
        v,
        dist,
        valid,
        None if sp is None else sp[..., None],
        ramp,
        None if tp is None else tp[..., None],
        return_stats,
    )
    if not return_stats:
        return out
    return out, (info[0].mean(), info[1])


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    span: torch.Tensor | float | None = None,
    ramp: float = 32.0,
    temperature: torch.Tensor | float | None = None,
    return_stats: bool = False,
    fused: bool | None = None,
):
    """Causal sliding-window attention, band ``[i - window + 1, i]``, vectorised over windows.

    Queries in blocks of ``window``; each block attends to the current and previous block under
    the band mask, optionally weighted by the soft span ``span`` (tokens, ``[B|1, H|1, T|1]``).
    ``q, k, v`` ``[B, H, T, hd]`` -> ``[B, H, T, hd]``.
    """
    if window <= 0:
        raise ValueError(f"sliding_window_attention: window must be positive, got {window}")
    return blocked_attention(
        q,
        k,
        v,
        block=window,
        lookback=window - 1,
        window=window,
        span=span,
        ramp=ramp,
        temperature=temperature,
        return_stats=return_stats,
        fused=fused,
    )


#: The original name of :func:`sliding_window_attention` (docs/provenance.md §6).
slide_win = sliding_window_attention

_compiled_flex = None
_block_masks: dict = {}


def flex_sliding_window_attention(
    q, k, v, window: int, span=None, ramp: float = 32.0, temperature=None, compile: bool = True
):
    """:func:`sliding_window_attention` through FlexAttention (block-sparse band mask + soft-span
    score modifier).

    Meant for CUDA (compiled); on the CPU FlexAttention has no backward, so it is only usable for
    inference there. Same arguments and result as :func:`sliding_window_attention`.
    """
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, T, _ = q.shape
    fn = flex_attention
    if compile:
        if _compiled_flex is None:
            # dynamic shapes: one graph for every (B, T); a static compile recompiles per length and
            # falls back to eager past the recompile limit (eval at several lengths)
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        fn = _compiled_flex
    sp = None if span is None else _per_query(span, q).expand(B, H, T)
    tp = None if temperature is None else _per_query(temperature, q).expand(B, H, T)

    def band(b, h, qi, ki):
        d = qi - ki
        return (d >= 0) & (d < window)

    def score_mod(score, b, h, qi, ki):
        if tp is not None:
            score = score / tp[b, h, qi]
        if sp is not None:
            m = ((ramp + sp[b, h, qi] - (qi - ki)) / ramp).clamp(0.0, 1.0)
            score = torch.where(m > 0, score + torch.log(m.clamp_min(_TINY)), _NEG_INF)
        return score

    key = (T, window, str(q.device))
    if key not in _block_masks:  # built once per (length, window, device), not every forward
        _block_masks[key] = create_block_mask(band, B=None, H=None, Q_LEN=T, KV_LEN=T, device=q.device)
    block_mask = _block_masks[key]
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask)
