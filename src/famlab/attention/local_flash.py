"""Fused CPU path of :func:`famlab.attention.local.blocked_attention` (same rule, same gradients).

The unfused path materialises ``[B, H, T, lookback + block]`` scores and runs ~15 elementwise
passes over them; on the CPU that costs more than PyTorch's fused causal SDPA over the whole
sequence. Here each query block attends to its key window through the fused CPU flash-attention
kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``, the kernel behind SDPA) with the
soft-span ramp as an additive float mask. That kernel gives no gradient for the mask, so the
span gradient is computed in :meth:`_BlockedFlash.backward` from the saved log-sum-exp, only on
the ramp band ``z <= d < z + ramp`` where ``d log m / d z = 1 / (ramp + z - d)`` is non-zero:
``dS = p * (dO.v_j - dO.O)`` for ``ceil(ramp) + 1`` distances per query. The band dot products
come from small GEMMs over each query block's band keys (:func:`_span_grad`, span per query;
:func:`_span_grad_blocks`, span per head/sequence), so no ``[T, window]`` elementwise pass and no
per-query gather of key rows. Temperature and the ``1/sqrt(hd)`` scale are folded into ``q`` by
the caller, so their gradients flow through ``dq``. With a span per query this path costs
~0.85-0.9x the unfused one at T=4096, window 256 (1 CPU thread, fwd+bwd), so it is the CPU default for
:class:`~famlab.attention.integrated.IntegratedAttention` too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.autograd.function import once_differentiable

try:
    _FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
    _FLASH_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
except (AttributeError, RuntimeError):  # older/newer torch without the CPU kernel
    _FLASH = _FLASH_BWD = None

_NEG_INF = float("-inf")


def fused_supported(q: torch.Tensor) -> bool:
    """True where the fused path applies: CPU tensors of a dtype the CPU flash kernel takes."""
    return _FLASH is not None and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64, torch.bfloat16)


def _geometry(T: int, block: int, lookback: int):
    block = min(block, T)
    n = -(-T // block)
    lookback = min(lookback, (n - 1) * block)
    return block, n, n * block - T, lookback, lookback + block


def _windows(t: torch.Tensor, block: int, n: int, pad_t: int, lookback: int, width: int) -> torch.Tensor:
    """``[B, H, T, hd]`` -> key windows ``[(n B), H, width, hd]``.

    Window ``m`` covers padded positions ``[m*block, m*block + width)``.
    """
    t = F.pad(t, (0, 0, lookback, pad_t)).unfold(2, width, block)  # [B, H, n, hd, width]
    return rearrange(t, "b h n d w -> (n b) h w d")  # overlapping strided view when B == 1 (no copy)


def _fold(win: torch.Tensor, B: int, T: int, block: int, n: int, lookback: int, width: int) -> torch.Tensor:
    """Adjoint of :func:`_windows`: sum overlapping window gradients back to ``[B, H, T, hd]``.

    Column ``c`` of window ``m`` is padded position ``m * block + c``: the window is cut into
    ``block``-wide column slices ``u`` and slice ``u`` of every window is added to output blocks
    ``u .. u + n - 1`` (a few adds, no copy of the windows, no index_add). The work runs in the
    ``[.., width, H, hd]`` layout the flash backward kernel returns, and the result keeps it.
    """
    H, hd = win.shape[1], win.shape[-1]
    win = win.transpose(1, 2).view(n, B, width, H, hd)
    out = win.new_zeros(n + -(-lookback // block), B, block, H, hd)
    for u in range(-(-width // block)):
        cols = win[:, :, u * block : (u + 1) * block]
        out[u : u + n, :, : cols.shape[2]] += cols
    return rearrange(out, "m b s h d -> b h (m s) d")[:, :, lookback : lookback + T]


def _masks(span, B, T, block, n, pad_t, lookback, width, window, ramp, dtype, device):
    """Additive masks (``log m`` on allowed keys, ``-inf`` elsewhere) for the ``(n B)`` batch.

    Returns ``(n_head, head_mask, body_mask)``. Span per query: ``n_head = 0`` and one mask per
    block ``[(n B), H|1, block, width]`` (``head_mask`` None). Otherwise the first ``n_head`` blocks
    reach before key 0 and get a per-block mask ``[(n_head B), H|1, block, width]``; the other
    blocks share one mask ``[1 | (n B), H|1, block, width]`` (broadcast over blocks).
    """
    out_dtype, dtype = dtype, torch.promote_types(dtype, torch.float32)  # exact distances, mask cast at the end
    a = torch.arange(block, device=device)
    dist = (a[:, None] + lookback - torch.arange(width, device=device)[None, :]).to(dtype)  # [block, width]
    valid = dist >= 0
    if window is not None:
        valid = valid & (dist < window)
    if span is None:
        bias = torch.zeros((), dtype=dtype, device=device).masked_fill(~valid, _NEG_INF)[None, None, None]
    else:
        if span.shape[-1] > 1:
            z = rearrange(F.pad(span, (0, pad_t), value=1.0), "b h (n s) -> n b h s 1", s=block)
        else:
            z = span[None, ..., None]  # [1, B', H', 1, 1]
        # log m, m = clamp((ramp + z - d) / ramp, 0, 1): in place on one [n | 1, B', H', block | 1, width]
        bias = (ramp + z - dist).clamp_(0.0, ramp).div_(ramp).log_()  # log 0 = -inf
        bias.masked_fill_(~valid, _NEG_INF)
    n_head = min(n, -(-lookback // block))
    q_pos = torch.arange(n_head * block, device=device, dtype=dtype).view(n_head, 1, 1, block, 1)
    if bias.shape[0] > 1:  # a mask per block anyway (span per query): one call, no split
        bias[:n_head].masked_fill_(dist > q_pos, _NEG_INF)  # key j = i - d < 0 is padding
        return 0, None, bias.expand(n, B, -1, -1, -1).flatten(0, 1).to(out_dtype).contiguous()
    head = bias.masked_fill(dist > q_pos, _NEG_INF)  # key j = i - d < 0 is padding
    head = head.expand(n_head, B, -1, -1, -1).flatten(0, 1).to(out_dtype).contiguous()
    body = bias.expand(n - n_head, B, -1, -1, -1) if bias.shape[1] > 1 else bias  # batch (n B) or 1
    return n_head, head, body.flatten(0, 1).to(out_dtype).contiguous()


def _cat(parts):
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _flash(q4, k4, v4, split, masks):
    outs = [_FLASH(q4[sl], k4[sl], v4[sl], attn_mask=m, scale=1.0) for sl, m in zip(split, masks)]
    return _cat([o for o, _ in outs]), _cat([l for _, l in outs])


def _flash_bwd(do4, q4, k4, v4, out4, lse4, split, masks):
    grads = [
        _FLASH_BWD(do4[sl], q4[sl], k4[sl], v4[sl], out4[sl], lse4[sl], 0.0, False, attn_mask=m, scale=1.0)
        for sl, m in zip(split, masks)
    ]
    return [_cat(g) for g in zip(*grads)]


def _span_grad(q4, k4, v4, k, v, do4, out4, lse4, span, B, T, n, block, pad_t, lookback, window, ramp):
    """``dL/dz`` per query ``[B, H, T]`` from the ramp band only (see module docstring).

    Query ``i`` needs ``q.k_j`` and ``dO.v_j`` for the band keys ``j = c_i - r``, ``c_i = i -
    ceil(z_i)``, ``r = 0..ceil(ramp)``. Per query block (and sequence, head) these lie in
    ``[lo, lo + sub)``, ``lo = min_i c_i - ceil(ramp)``, ``sub = block + 2 ceil(ramp)``, whenever
    ``c_i`` varies by less than ``block + ceil(ramp)`` inside the block (a span that changes
    slowly along the sequence, as a running mean does): one ``[block, hd] x [hd, sub]`` GEMM each
    on that gathered sub-window, then a gather of the band columns, so the elementwise work is
    ``[T, ceil(ramp) + 1]``. Blocks where it does not hold are recomputed exactly on their whole
    key window (``[block, hd] x [hd, width]``); they are found on the CPU without a device sync.
    """
    H, hd, width = q4.shape[1], q4.shape[-1], k4.shape[2]
    dev, gd = q4.device, torch.promote_types(q4.dtype, torch.float32)
    rb = math.ceil(ramp)
    steps, sub = rb + 1, min(block + 2 * rb, width, T)
    z = rearrange(F.pad(span.to(gd), (0, pad_t), value=1.0), "b h (n s) -> n b h s 1", s=block)
    z = z.expand(n, B, H, block, 1)
    a = torch.arange(block, device=dev, dtype=gd)[:, None]
    q_pos = (torch.arange(n, device=dev, dtype=gd) * block).view(n, 1, 1, 1, 1) + a  # [n, 1, 1, block, 1]
    top = q_pos - torch.ceil(z)  # c_i, [n, B, H, block, 1]
    d = torch.ceil(z) + torch.arange(steps, device=dev, dtype=gd)  # [n, B, H, block, steps]
    col = lookback + a - d  # column in the block's key window
    ok = (d < z + ramp) & (d <= q_pos) & (col >= 0)
    if window is not None:
        ok = ok & (d < window)
    # sub-window start per (block, sequence, head) from the rows that need a key (c_i >= 0, i < T)
    needs = (top >= 0) & (q_pos < T)
    lo = (torch.where(needs, top, float(T)).amin(dim=(-2, -1)) - rb).clamp(0, T - sub)  # [n, B, H]
    bad = (needs & (top - lo[..., None, None] >= sub)).flatten(2).any(-1).flatten()  # [(n B)]
    lo_i = lo.long()
    seq = (torch.arange(B, device=dev)[:, None] * H + torch.arange(H, device=dev)) * T  # [B, H] row offsets
    rows = (seq[..., None] + lo_i[..., None] + torch.arange(sub, device=dev)).flatten()  # rows of [(B H T), hd]
    sub_col = (q_pos - d - lo[..., None, None]).clamp(0, sub - 1).long()
    redo = bad.nonzero().squeeze(1)  # blocks whose band leaves the sub-window (few or none)
    win_col = col.clamp(0, width - 1).long().flatten(0, 1).index_select(0, redo)

    def band(x4, t, t4):  # x . t_j at the band keys: [n, B, H, block, steps]
        t_sub = t.reshape(-1, hd).index_select(0, rows).view(n, B, H, sub, hd)  # contiguous row copies
        x = x4.view(n, B, H, block, hd)
        out = (x @ t_sub.transpose(-2, -1)).gather(-1, sub_col).flatten(0, 1)
        full = x4.index_select(0, redo) @ t4.index_select(0, redo).transpose(-2, -1)  # [m, H, block, width]
        out.index_copy_(0, redo, full.gather(-1, win_col))
        return out.view(n, B, H, block, steps).to(gd)

    span_term = ramp + z - d
    p = torch.exp(band(q4, k, k4) + torch.log((span_term / ramp).clamp_min(1e-30)) - lse4.view(n, B, H, block, 1))
    delta = (do4 * out4).sum(-1).to(gd).view(n, B, H, block, 1)  # D_i = dO_i . O_i
    ds = torch.where(ok, p * (band(do4, v, v4) - delta) / span_term.clamp_min(1e-30), 0.0).sum(-1)
    return rearrange(ds, "n b h s -> b h (n s)")[:, :, :T]


def _span_grad_blocks(q4, k4, v4, do4, out4, lse4, span, B, n, block, lookback, window, ramp):
    """``dL/dz`` ``[B, H, 1]`` for a span constant over queries (per head/sequence), from blocks.

    For such a span the ramp band of every query block is the same sub-window of its key window:
    columns ``[lookback - ceil(z) - ceil(ramp), lookback - ceil(z) + block)``. One gather of that
    sub-window and two small products ``[block, hd] x [hd, block + ceil(ramp)]`` per block give
    ``dS`` on the band (``T * (block + ramp)`` entries instead of ``T * window``).
    """
    H, hd, width = q4.shape[1], q4.shape[-1], k4.shape[2]
    rb = math.ceil(ramp)
    zc = torch.ceil(span.expand(B, H, 1))  # [B, H, 1]
    gd = torch.promote_types(q4.dtype, torch.float32)
    c_raw = lookback - zc - rb + torch.arange(block + rb, device=q4.device, dtype=gd)  # [B, H, block+rb]
    idx = c_raw.clamp(0, width - 1).long()[None, :, :, :, None].expand(n, B, H, block + rb, hd)
    k_band = k4.reshape(n, B, H, width, hd).gather(3, idx).flatten(0, 1)  # [(n B), H, block+rb, hd]
    v_band = v4.reshape(n, B, H, width, hd).gather(3, idx).flatten(0, 1)
    a = torch.arange(block, device=q4.device, dtype=gd)[:, None]
    dist = a + lookback - c_raw[None, :, :, None, :]  # [1, B, H, block, block+rb]
    z = span.expand(B, H, 1)[None, :, :, :, None]
    q_pos = (torch.arange(n, device=q4.device, dtype=gd) * block)[:, None, None, None, None] + a
    ok = (c_raw[None, :, :, None, :] >= 0) & (dist >= z) & (dist < z + ramp) & (dist <= q_pos)
    if window is not None:
        ok = ok & (dist < window)
    span_term = ramp + z - dist
    logits = (q4 @ k_band.transpose(-2, -1)).view(n, B, H, block, block + rb)
    p = torch.exp(logits + torch.log((span_term / ramp).clamp_min(1e-30)) - lse4.view(n, B, H, block, 1))
    d_p = (do4 @ v_band.transpose(-2, -1)).view(n, B, H, block, block + rb)
    delta = (do4 * out4).sum(-1).view(n, B, H, block, 1)
    ds = torch.where(ok, p * (d_p - delta) / span_term.clamp_min(1e-30), 0.0)
    return ds.sum(dim=(0, 3, 4))[..., None]  # [B, H, 1]


class _BlockedFlash(torch.autograd.Function):
    """``q`` (pre-scaled), ``k``, ``v`` ``[B, H, T, hd]``, ``span`` ``[B', H', T']`` or None."""

    @staticmethod
    def forward(ctx, q, k, v, span, block, lookback, window, ramp):
        B, H, T, hd = q.shape
        block, n, pad_t, lookback, width = _geometry(T, block, lookback)
        q4 = rearrange(F.pad(q, (0, 0, 0, pad_t)), "b h (n s) d -> (n b) h s d", s=block).contiguous()
        k4 = _windows(k, block, n, pad_t, lookback, width)
        v4 = _windows(v, block, n, pad_t, lookback, width)
        n_head, head, body = _masks(span, B, T, block, n, pad_t, lookback, width, window, ramp, q.dtype, q.device)
        pairs = ((slice(0, n_head * B), head), (slice(n_head * B, n * B), body))
        parts = [(sl, m) for sl, m in pairs if sl.stop > sl.start]
        split, masks = [sl for sl, _ in parts], [m for _, m in parts]
        out4, lse4 = _flash(q4, k4, v4, split, masks)
        ctx.save_for_backward(q, k, v, span, q4, k4, v4, out4, lse4, *masks)
        ctx.geom = (B, T, block, n, pad_t, lookback, width, window, ramp, split)
        return rearrange(out4, "(n b) h s d -> b h (n s) d", b=B)[:, :, :T]

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        q, k, v, span, q4, k4, v4, out4, lse4, *masks = ctx.saved_tensors
        B, T, block, n, pad_t, lookback, width, window, ramp, split = ctx.geom
        dout = dout.contiguous()
        do4 = rearrange(F.pad(dout, (0, 0, 0, pad_t)), "b h (n s) d -> (n b) h s d", s=block).contiguous()
        dq4, dk4, dv4 = _flash_bwd(do4, q4, k4, v4, out4, lse4, split, masks)
        dq = rearrange(dq4, "(n b) h s d -> b h (n s) d", b=B)[:, :, :T]
        dk = _fold(dk4, B, T, block, n, lookback, width)
        dv = _fold(dv4, B, T, block, n, lookback, width)
        dspan = None
        if span is not None and ctx.needs_input_grad[3] and span.shape[-1] == 1:
            dspan = _span_grad_blocks(q4, k4, v4, do4, out4, lse4, span, B, n, block, lookback, window, ramp)
            dspan = dspan.sum_to_size(span.shape)
        elif span is not None and ctx.needs_input_grad[3]:
            dspan = _span_grad(q4, k4, v4, k, v, do4, out4, lse4, span, B, T, n, block, pad_t, lookback, window, ramp)
            dspan = dspan.sum_to_size(span.shape)
        return dq, dk, dv, dspan, None, None, None, None


def fused_blocked_attention(q, k, v, *, block, lookback, window=None, span=None, ramp=32.0, temperature=None):
    """Fused equivalent of ``blocked_attention(..., return_stats=False)``; see the module docstring.

    ``span``/``temperature``: None or tensors ``[B|1, H|1, T|1]`` (already 3-D).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    # temperature in float32 (or wider); the scaled queries keep q's dtype for the kernel
    q = (q * (scale / temperature[..., None])).to(q.dtype) if temperature is not None else q * scale
    return _BlockedFlash.apply(q, k, v, span, block, lookback, window, float(ramp))
