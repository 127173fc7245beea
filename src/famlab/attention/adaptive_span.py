"""``attention=adaptive_span``: causal attention with a learned span per head.

Sukhbaatar et al. (2019), "Adaptive Attention Span in Transformers" (facebookresearch/adaptive-span):
head ``h`` weights a key at distance ``d`` by ``m(d) = clamp((R + z_h - d) / R, 0, 1)`` with
``z_h = max_dist * clamp(span_scale_h, 0, 1)``, applied as ``log m`` on the scores (= multiply and
renormalise). Keys with ``m = 0`` are not computed: queries are processed in blocks that gather
only the keys within the current largest span plus the ramp (:func:`blocked_attention`).

Differences from the seed (``AdaptiveSpan(dims, head, max_dist, sharpen, temp_scale)``): the seed
attended the first ``max_span * mean(span_scale)`` *positions* (a prefix, read with ``.item()``
so ``span_scale`` never learned), had no projections and no causal mask, and scaled logits by
``hd^-1/4``. Here the span is a relative distance per head, differentiable, causal, with QKV
projections, ``1/sqrt(hd)`` scaling and a full-length output. The seed's temperature sharpening
is kept as a differentiable per-head tensor: ``T = 1 + temp_scale * (1 - s)`` (``sharpen``) or
``0.5 + temp_scale * s``, with ``s = clamp(span_scale, 0, 1)``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from famlab.attention.cache import KVCache
from famlab.attention.core import AttentionBase
from famlab.attention.local import blocked_attention, dense_local_attention


def _refresh_after_load(module: "AdaptiveSpan", _incompatible_keys) -> None:
    module.refresh_extent()


class AdaptiveSpan(AttentionBase):
    """Learned-span causal MHA. ``x`` ``[B, T, dims]`` -> ``[B, T, dims]``.

    ``span_scale`` ``[head]`` (init ``init_span``) sets ``z_h = max_dist * clamp(span_scale_h, 0, 1)``
    tokens; ``ramp`` is the soft-edge length ``R``; ``span_penalty`` weights the L1 span loss
    returned by :meth:`aux_loss` (``span_penalty * mean_h z_h``, as ``adapt_span_loss``);
    ``block`` is the query block size of the blocked computation.

    The number of keys gathered per block (the *extent*, ``ceil(max_h z_h + R)`` rounded up to
    ``extent_round``) is a host value derived from the parameter. It is refreshed in
    :meth:`post_step` (after the span clamp, once per optimizer step), on ``load_state_dict`` and
    on every eval-mode forward, so a training forward performs no host sync.
    """

    def __init__(
        self,
        dims: int,
        head: int,
        position: nn.Module | None = None,
        max_dist: int = 512,
        sharpen: bool = True,
        temp_scale: float = 0.01,
        ramp: int = 32,
        span_penalty: float = 0.0,
        init_span: float = 1.0,
        block: int = 128,
        extent_round: int = 64,
        bias: bool = False,
    ):
        super().__init__(dims, head, position, bias=bias)
        if max_dist <= 0:
            raise ValueError(f"attention.max_dist must be a positive number of tokens, got {max_dist}")
        if ramp <= 0:
            raise ValueError(f"attention.ramp must be positive (tokens of soft edge), got {ramp}")
        if not 0.0 <= init_span <= 1.0:
            raise ValueError(f"attention.init_span must lie in [0, 1] (fraction of max_dist), got {init_span}")
        if span_penalty < 0 or temp_scale < 0:
            raise ValueError("attention.span_penalty and attention.temp_scale must be >= 0")
        if block <= 0 or extent_round <= 0:
            raise ValueError(
                f"attention.block and attention.extent_round must be positive, got {block}, {extent_round}"
            )
        self.max_dist, self.ramp, self.sharpen = int(max_dist), float(ramp), bool(sharpen)
        self.temp_scale, self.span_penalty = float(temp_scale), float(span_penalty)
        self.block, self.extent_round = int(block), int(extent_round)
        self.span_scale = nn.Parameter(torch.full((head,), float(init_span)))
        self.extent = 0
        self.refresh_extent()
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # --- span quantities (differentiable) ------------------------------------------------
    def spans(self) -> torch.Tensor:
        """Current span per head in tokens, ``[head]``."""
        return self.max_dist * self.span_scale.clamp(0.0, 1.0)

    def temperature(self) -> torch.Tensor:
        """Per-head logit temperature ``[head]`` (the seed's sharpening formula)."""
        s = self.span_scale.clamp(0.0, 1.0)
        return 1.0 + self.temp_scale * (1.0 - s) if self.sharpen else 0.5 + self.temp_scale * s

    @torch.no_grad()
    def refresh_extent(self) -> int:
        """Recompute the key extent from the span parameter (one host read)."""
        reach = math.ceil(float(self.spans().max()) + self.ramp)
        self.extent = -(-reach // self.extent_round) * self.extent_round
        return self.extent

    # --- mixer contract -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        q, k, v = self.project_qkv(x, positions)
        span = self.spans().view(1, -1, 1)
        temp = self.temperature().view(1, -1, 1)
        stats = self.record_stats
        if not self.training:  # cheap safety net outside the training hot path
            self.refresh_extent()
        if cache is None:
            res = blocked_attention(
                q, k, v, block=self.block, lookback=self.extent, span=span, ramp=self.ramp,
                temperature=temp, return_stats=stats,
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
        """Clamp ``span_scale`` to ``[0, 1]`` and cache the key extent for the next forward."""
        with torch.no_grad():
            self.span_scale.clamp_(0.0, 1.0)
        self.refresh_extent()

    def metrics(self) -> dict[str, torch.Tensor]:
        z = self.spans().detach()
        out = {"span/mean": z.mean(), "span/max": z.max(), "span/temperature": self.temperature().detach().mean()}
        out.update(self._stats)
        return out
