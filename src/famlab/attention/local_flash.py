"""Fused CPU path of :func:`famlab.attention.local.blocked_attention` (same rule, same gradients).

The unfused path materialises ``[B, H, T, lookback + block]`` scores and runs ~15 elementwise
passes over them; on the CPU that costs more than PyTorch's fused causal SDPA over the whole
sequence. Here each query block attends to its key window through the fused CPU flash-attention
kernel (``aten::_scaled_dot_product_flash_attention_for_cpu``, the kernel behind SDPA) with the
soft-span ramp as an additive float mask. That kernel gives no gradient for the mask, so the
span gradient is computed in :meth:`_BlockedFlash.backward` from the saved log-sum-exp, only on
the ramp band ``z <= d < z + ramp`` where ``d log m / d z = 1 / (ramp + z - d)`` is non-zero:
``dS = p * (dO.v_j - dO.O)`` for ``ceil(ramp) + 1`` distances per query (gathers of
``[B, H, T, hd]``, no ``[T, window]`` tensor). Temperature and the ``1/sqrt(hd)`` scale are folded
into ``q`` by the caller, so their gradients flow through ``dq``.
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
    """Adjoint of :func:`_windows`: sum overlapping window gradients back to ``[B, H, T, hd]``."""
    H, hd = win.shape[1], win.shape[-1]
    idx = (torch.arange(n, device=win.device)[:, None] * block + torch.arange(width, device=win.device)).flatten()
    out = win.new_zeros(B, H, lookback + n * block, hd)
    out.index_add_(2, idx, rearrange(win, "(n b) h w d -> b h (n w) d", b=B))
    return out[:, :, lookback:lookback + T]


def _masks(span, B, T, block, n, pad_t, lookback, width, window, ramp, dtype, device):
    """Additive masks (``log m`` on allowed keys, ``-inf`` elsewhere) for the ``(n B)`` batch.

    Returns ``(n_head, head_mask, body_mask)``: the first ``n_head`` blocks reach before key 0 and
    get a per-block mask ``[(n_head B), H|1, block, width]``; the other blocks share one mask
    ``[1 | (n B), H|1, block, width]`` (broadcast when the span does not vary per sequence/query).
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
        m = ((ramp + z - dist) / ramp).clamp(0.0, 1.0)  # [n | 1, B', H', block | 1, width]
        bias = torch.where(valid & (m > 0), torch.log(m.clamp_min(1e-30)), _NEG_INF)
    n_head = min(n, -(-lookback // block))
    q_pos = torch.arange(n_head * block, device=device, dtype=dtype).view(n_head, 1, 1, block, 1)
    head = bias[:n_head] if bias.shape[0] > 1 else bias
    head = head.masked_fill(dist > q_pos, _NEG_INF)  # key j = i - d < 0 is padding
    head = head.expand(n_head, B, -1, -1, -1).flatten(0, 1).to(out_dtype).contiguous()
    body = bias[n_head:] if bias.shape[0] > 1 else bias
    if body.shape[0] > 1 or body.shape[1] > 1:
        body = body.expand(n - n_head, B, -1, -1, -1)
    return n_head, head, body.flatten(0, 1).to(out_dtype).contiguous()


def _flash(q4, k4, v4, split, masks):
    outs = [_FLASH(q4[sl], k4[sl], v4[sl], attn_mask=m, scale=1.0) for sl, m in zip(split, masks)]
    return torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs])


def _flash_bwd(do4, q4, k4, v4, out4, lse4, split, masks):
    grads = [_FLASH_BWD(do4[sl], q4[sl], k4[sl], v4[sl], out4[sl], lse4[sl], 0.0, False, attn_mask=m, scale=1.0)
             for sl, m in zip(split, masks)]
    return [torch.cat(g) for g in zip(*grads)]


def _span_grad(q, k, v, dout, out, lse, span, ramp, window, chunk: int = 8):
    """``dL/dz`` per query ``[B, H, T]`` from the ramp band only (see module docstring).

    Distances ``ceil(z) + r``, ``r = 0..ceil(ramp)``, in chunks of ``chunk``: per chunk one row
    gather of ``[k | v]`` and one product with ``[q | dO]`` (few large ops, not many small ones).
    """
    B, H, T, hd = q.shape
    z = span.expand(B, H, T).reshape(1, -1)  # [1, N], N = B*H*T
    gd = torch.promote_types(q.dtype, torch.float32)
    i = torch.arange(T, device=q.device, dtype=gd).repeat(B * H)[None]
    row0 = (torch.arange(B * H, device=q.device) * T).repeat_interleave(T)[None]
    kv = torch.cat([k, v], dim=-1).reshape(-1, 2 * hd)
    qd = torch.cat([q, dout], dim=-1).reshape(1, -1, 2, hd)
    delta = (dout * out).sum(-1).reshape(1, -1)  # D_i = dO_i . O_i
    lse = lse.reshape(1, -1)
    grad = torch.zeros_like(z)
    start = torch.ceil(z)
    steps = math.ceil(ramp) + 1
    for r0 in range(0, steps, chunk):
        d = start + torch.arange(r0, min(r0 + chunk, steps), device=q.device, dtype=gd)[:, None]  # [R, N]
        j = i - d
        ok = (j >= 0) & (d < z + ramp)
        if window is not None:
            ok = ok & (d < window)
        rows = (row0 + j.clamp_min(0).long()).reshape(-1)
        dots = (kv.index_select(0, rows).view(d.shape[0], -1, 2, hd) * qd).sum(-1)  # [R, N, 2]: q.k_j, dO.v_j
        span_term = ramp + z - d
        s = dots[..., 0] + torch.log((span_term / ramp).clamp_min(1e-30))
        ds = torch.exp(s - lse) * (dots[..., 1] - delta)
        grad = grad + torch.where(ok, ds / span_term.clamp_min(1e-30), 0.0).sum(0, keepdim=True)
    return grad.view(B, H, T)


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
            out = rearrange(out4, "(n b) h s d -> b h (n s) d", b=B)[:, :, :T]
            lse = rearrange(lse4, "(n b) h s -> b h (n s)", b=B)[:, :, :T]
            dspan = _span_grad(q, k, v, dout, out, lse, span, ramp, window).sum_to_size(span.shape)
        return dq, dk, dv, dspan, None, None, None, None


def fused_blocked_attention(q, k, v, *, block, lookback, window=None, span=None, ramp=32.0, temperature=None):
    """Fused equivalent of ``blocked_attention(..., return_stats=False)``; see the module docstring.

    ``span``/``temperature``: None or tensors ``[B|1, H|1, T|1]`` (already 3-D).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    q = q * (scale / temperature[..., None]) if temperature is not None else q * scale
    return _BlockedFlash.apply(q, k, v, span, block, lookback, window, float(ramp))
