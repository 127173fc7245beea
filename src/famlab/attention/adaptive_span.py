"""``attention=adaptive_span``: causal attention with a learned span per head.

Sukhbaatar et al. (2019), "Adaptive Attention Span in Transformers" (facebookresearch/adaptive-span):
head ``h`` weights a key at distance ``d`` by ``m(d) = clamp((R + z_h - d) / R, 0, 1)`` with
``z_h = max_dist * clamp(span_scale_h, 0, 1)``, applied as ``log m`` on the scores (= multiply and
renormalise). Keys with ``m = 0`` are not computed: queries are processed in blocks that gather
only the keys within the current largest span plus the ramp (:func:`blocked_attention`).

Otherwise standard causal attention (QKV projections, the position scheme, ``1/sqrt(hd)``
scaling). Logits are also divided by a per-head temperature ``T = 1 + temp_scale * (1 - s)``
(``sharpen``) or ``0.5 + temp_scale * s``, with ``s = clamp(span_scale, 0, 1)``. With
``span_penalty > 0``, :meth:`AdaptiveSpan.aux_loss` adds the paper's L1 span loss
(``attention=adaptive_span_penalty``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from famlab.attention.cache import KVCache
from famlab.attention.core import AttentionBase
from famlab.attention.local import blocked_attention, dense_local_attention


def _refresh_after_load(module: AdaptiveSpan, _incompatible_keys) -> None:
    module.refresh_extent()


def _positive_int(key: str, value, what: str) -> int:
    """``int(value)``, refused unless the result is positive (0.5 tokens is not a size)."""
    as_int = int(value)
    if as_int <= 0:
        raise ValueError(f"attention.{key} must be a positive number of {what}, got {value!r}")
    return as_int


class AdaptiveSpan(AttentionBase):
    """Learned-span causal MHA. ``x`` ``[B, T, dims]`` -> ``[B, T, dims]``.

    Positional arguments are ``(dims, head, max_dist, sharpen, temp_scale)`` (the original's
    order, docs/provenance.md §3); the rest are keyword-only. ``span_scale`` ``[head]`` sets ``z_h = max_dist *
    clamp(span_scale_h, 0, 1)`` tokens; ``ramp`` is the soft-edge length ``R``; ``span_penalty``
    weights the L1 span loss returned by :meth:`aux_loss` (``span_penalty * mean_h z_h``, z in
    tokens: the adaptive-span paper's ``adapt_span_loss``, 2e-6 there); ``block`` is the query
    block size of the blocked computation.

    ``init_span`` (fraction of ``max_dist``) defaults to ``max(0, max_dist - ramp) / max_dist``:
    the ramp then ends exactly at distance ``max_dist``, so every key of a ``max_dist``-token
    context is still weighted (``m >= 1/R``) while the keys at ``d > z`` sit on the ramp and pass
    a gradient to ``span_scale`` from the first step. With ``init_span = 1`` and ``max_dist`` equal
    to the context, ``m = 1`` for every key and the clamp passes no gradient.

    The number of keys gathered per block (the *extent*, ``ceil(max_h z_h + R)`` rounded up to
    ``extent_round``) is a host integer that sets tensor shapes. It is recomputed without a host
    read on the step path: :meth:`post_step` copies ``max_h z_h`` into a host buffer
    asynchronously (pinned memory and an event on CUDA) and a later forward adopts it once the
    copy has landed. Until then the forward caps every span at ``extent - R`` (the reach the
    current extent covers), so the result is always the exact masked attention of the spans it
    used; the rounding to ``extent_round`` leaves room for spans to grow between refreshes.
    The extent is recomputed directly (one read) at construction and after ``load_state_dict``.
    """

    def __init__(
        self,
        dims: int,
        head: int,
        max_dist: int = 512,
        sharpen: bool = True,
        temp_scale: float = 0.01,
        *,
        position: nn.Module | None = None,
        ramp: int = 32,
        span_penalty: float = 0.0,
        init_span: float | None = None,
        block: int = 128,
        extent_round: int = 64,
        bias: bool = False,
    ):
        super().__init__(dims, head, position, bias=bias)
        if isinstance(max_dist, nn.Module):
            raise TypeError("AdaptiveSpan: the third positional argument is max_dist; pass position=... by keyword")
        self.max_dist = _positive_int("max_dist", max_dist, "tokens")
        if ramp <= 0:
            raise ValueError(f"attention.ramp must be positive (tokens of soft edge), got {ramp}")
        if init_span is None:
            init_span = max(0.0, self.max_dist - float(ramp)) / self.max_dist
        if not 0.0 <= init_span <= 1.0:
            raise ValueError(
                f"attention.init_span must lie in [0, 1] (fraction of max_dist) or be null, got {init_span}"
            )
        if span_penalty < 0 or temp_scale < 0:
            raise ValueError("attention.span_penalty and attention.temp_scale must be >= 0")
        self.block = _positive_int("block", block, "queries")
        self.extent_round = _positive_int("extent_round", extent_round, "keys")
        self.ramp, self.sharpen = float(ramp), bool(sharpen)
        self.temp_scale, self.span_penalty = float(temp_scale), float(span_penalty)
        self.span_scale = nn.Parameter(torch.full((head,), float(init_span)))
        self.extent = 0
        self._reach_host: torch.Tensor | None = None  # host buffer of max_h z_h written by post_step
        self._reach_ready = None  # CUDA event of that copy (None: nothing pending / CPU copy)
        self._reach_pending = False
        self.refresh_extent()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # --- span quantities (differentiable) ------------------------------------------------
    def _scale(self) -> torch.Tensor:
        """``clamp(span_scale, 0, 1)`` in float32 or wider (a bfloat16 copy would round spans)."""
        p = self.span_scale
        return p.to(torch.promote_types(p.dtype, torch.float32)).clamp(0.0, 1.0)

    def spans(self) -> torch.Tensor:
        """Current span per head in tokens, ``[head]`` (float32 or wider, also under autocast)."""
        return self.max_dist * self._scale()

    def temperature(self) -> torch.Tensor:
        """Per-head logit temperature ``[head]`` (``sharpen``: ``1 + temp_scale * (1 - s)``), float32 or wider."""
        s = self._scale()
        return 1.0 + self.temp_scale * (1.0 - s) if self.sharpen else 0.5 + self.temp_scale * s

    def _extent_of(self, reach: float) -> int:
        keys = math.ceil(reach + self.ramp)
        return -(-keys // self.extent_round) * self.extent_round

    @torch.no_grad()
    def refresh_extent(self) -> int:
        """Recompute the key extent from the span parameter now (one host read; not on the step path)."""
        self.extent = self._extent_of(float(self.spans().max()))
        self._reach_pending = False
        return self.extent

    @torch.no_grad()
    def _request_extent(self) -> None:
        """Start copying ``max_h z_h`` to the host without waiting for it."""
        reach = self.spans().max().detach()
        if self._reach_host is None:
            self._reach_host = torch.zeros((), dtype=reach.dtype, pin_memory=reach.is_cuda)
        self._reach_host.copy_(reach, non_blocking=reach.is_cuda)
        self._reach_ready = None
        if reach.is_cuda:
            self._reach_ready = torch.cuda.Event()
            self._reach_ready.record()
        self._reach_pending = True

    def _adopt_extent(self) -> None:
        """Take the extent from the last requested copy if it has landed (never waits)."""
        if not self._reach_pending or (self._reach_ready is not None and not self._reach_ready.query()):
            return
        self.extent = self._extent_of(float(self._reach_host.numpy()))  # host memory: no device read
        self._reach_pending = False

    # --- mixer contract -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        self._adopt_extent()
        q, k, v = self.project_qkv(x, positions)
        # spans beyond what the current extent gathers are capped (see the class docstring)
        span = self.spans().clamp(max=self.extent - self.ramp).view(1, -1, 1)
        temp = self.temperature().view(1, -1, 1)
        stats = self.record_stats
        if cache is None:
            res = blocked_attention(
                q,
                k,
                v,
                block=self.block,
                lookback=self.extent,
                span=span,
                ramp=self.ramp,
                temperature=temp,
                return_stats=stats,
            )
        else:
            past, tq = len(cache), q.shape[-2]
            k_all, v_all = cache.append(k, v)
            keep = min(k_all.shape[-2], self.extent + tq)  # older keys have m = 0
            k_all, v_all = k_all[..., -keep:, :], v_all[..., -keep:, :]
            q_pos = torch.arange(past, past + tq, device=x.device)
            k_pos = torch.arange(past + tq - keep, past + tq, device=x.device)
            res = dense_local_attention(
                q, k_all, v_all, q_pos, k_pos, span=span, ramp=self.ramp, temperature=temp, return_stats=stats
            )
        if stats:
            res, (entropy, max_logit) = res
            self._stats = {"attn/entropy": entropy, "attn/max_logit": max_logit}
        return self.out(res)

    def aux_loss(self) -> torch.Tensor | None:
        """L1 span penalty ``span_penalty * mean_h z_h`` (None when the penalty is 0)."""
        if self.span_penalty == 0.0:
            return None
        return self.span_penalty * self.spans().mean()

    def post_step(self, loss: torch.Tensor | None = None) -> None:
        """Clamp ``span_scale`` to ``[0, 1]`` and start the host copy of the new extent (no wait)."""
        with torch.no_grad():
            self.span_scale.clamp_(0.0, 1.0)
        self._request_extent()

    def metrics(self) -> dict[str, torch.Tensor]:
        z = self.spans().detach()
        out = {
            "span/mean": z.mean(),
            "span/max": z.max(),
            "span/temperature": self.temperature().detach().mean(),
            "span/extent": z.new_tensor(float(self.extent)),
        }
        out.update(self._stats)
        return out
