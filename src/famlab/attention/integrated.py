"""``attention=integrated``: causal sliding-window attention with a learned soft span, plus a
global branch, mixed by a learned per-head gate.

``x`` ``[B, T, dims]`` -> ``[B, T, dims]``. One ``qkv`` projection (:class:`AttentionBase`'s)
feeds both branches, and one output projection follows the mix:
``y = proj(g * local + (1 - g) * global)``, ``g = sigmoid(gate)`` ``[head]`` (``gate_init`` logit,
0 -> ``g = 0.5``), so the projection cost is standard attention's ``4 * dims^2`` per token.

* **Local branch**: causal band ``[i - window + 1, i]``, ``window = min(win_size, max_dist)``,
  computed in query blocks of ``min(64, window)`` (:func:`famlab.attention.local.blocked_attention`;
  FlexAttention on CUDA), cost ``T * window``. Query ``i`` weights a key at distance ``d`` by the
  soft-span ramp ``clamp((ramp + z_i - d) / ramp, 0, 1)`` of Sukhbaatar et al. (2019) with
  ``z_i = max_span * S_i`` tokens, and divides its logits by ``1 + temp_scale * (1 - S_i)``.
  ``S_i = clamp(sigmoid(span_pred(mean of the global outputs up to i)) * factor, 0, 1)``: the
  running (causal) mean keeps the span causal and differentiable, so ``span_pred`` learns;
  ``factor`` is the :class:`~famlab.attention.refiner.Refiner`'s span factor (1 without one).
  ``focus_iters`` repeats the local branch with ``q <- q + local_out`` (1 = once).
* **Global branch** (``global_branch``): ``"summary"`` (default) compresses every
  ``summary_block`` tokens into one mean key/value pair (the key rotated at the block's last
  position) and lets query ``i`` attend to the summaries of the blocks complete at ``i``
  (:mod:`famlab.attention.summary`; compressive/landmark style: Rae et al. 2020, Mohtashami &
  Jaggi 2023, the compression branch of NSA, Yuan et al. 2025), cost ``T * T / summary_block``.
  Tokens before the end of the first block have no complete block: the span predictor sees a
  zero global output there and the mix uses the local output alone, whatever the gate.
  ``"full"`` is causal multi-head attention (cost ``T^2``). With ``summary_block <= window``
  every past token is in the local band or in a complete summarised block.
* **Refiner** (``refiner``, optional): tabular Q-learning that picks the span factor once every
  few optimizer steps in :meth:`IntegratedAttention.post_step` (buffers, no host sync);
  ``attention=local_global`` is this module without it
  (:class:`famlab.attention.local_global.LocalGlobalAttention`).

With ``global_branch="full"``, a window and span covering the context, ``temp_scale=0`` and no
refiner, both branches are the same causal attention and the module equals
:class:`~famlab.attention.standard.StandardAttention` with the same ``qkv``/``proj``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from famlab.attention.cache import KVCache
from famlab.attention.core import AttentionBase, causal_mask, merge_heads, split_heads
from famlab.attention.local import blocked_attention, dense_local_attention, flex_sliding_window_attention
from famlab.attention.refiner import build_refiner
from famlab.attention.summary import block_means, summary_attention

_BACKENDS = ("auto", "blocked", "flex")
_GLOBAL_BRANCHES = ("summary", "full")
# Local branch queries per block: keys per block = window - 1 + block, so blocks smaller than the
# window compute fewer out-of-band scores (sliding_window_attention's block = window leaves half of
# each 2 * window key window out of band); 64 is the fastest at window 256 on the CPU (fwd+bwd).
_LOCAL_QUERY_BLOCK = 64


class IntegratedAttention(AttentionBase):
    """Sliding-window branch with a learned soft span + a global branch, gated, then ``proj``.

    ``global_branch``: ``"summary"`` (default; attention over block-mean summaries, blocks of
    ``summary_block`` tokens, None = the local window) or ``"full"`` (causal MHA). ``qkv`` and
    ``proj`` (``dims -> dims``) from :class:`AttentionBase` serve both branches; ``gate`` ``[head]``
    are the combination logits (``sigmoid(gate)`` = weight of the local branch). ``backend``:
    ``"auto"`` (default: FlexAttention on CUDA unless stats are being recorded, the blocked/fused
    path otherwise), ``"blocked"`` (pure PyTorch; fused kernel on the CPU) or ``"flex"``
    (FlexAttention; compiled on CUDA, forward-only on the CPU).

    Positional arguments are ``(dims, head, max_dist, win_size, max_span, temp_scale)`` (the
    original's order, docs/provenance.md §6); the rest are keyword-only. Sizes are cast to ``int`` and must stay
    positive after the cast. The span ramp passes a gradient to ``span_pred`` only where
    ``z_i < d < z_i + ramp`` for some visible distance ``d`` (``d < min(window, T)``): with
    ``max_span`` larger than the context, ``z_i ~ max_span / 2`` at initialisation covers every
    key and the span cannot learn, so the configs cap ``max_span`` at the context.
    """

    def __init__(
        self,
        dims: int,
        head: int,
        max_dist: int = 512,
        win_size: int = 256,
        max_span: int = 384,
        temp_scale: float = 0.01,
        *,
        position: nn.Module | None = None,
        refiner: Mapping | None = None,
        focus_iters: int = 1,
        ramp: int = 32,
        backend: str = "auto",
        global_branch: str = "summary",
        summary_block: int | None = None,
        gate_init: float = 0.0,
        bias: bool = False,
    ):
        super().__init__(dims, head, position, bias=bias)
        if isinstance(max_dist, nn.Module):
            raise TypeError(
                "IntegratedAttention: the third positional argument is max_dist; pass position=... by keyword"
            )
        sizes = {}
        for key, value in dict(
            max_dist=max_dist, win_size=win_size, max_span=max_span, focus_iters=focus_iters
        ).items():
            sizes[key] = int(value)  # validated after the cast: 0.5 tokens truncates to 0
            if sizes[key] <= 0:
                raise ValueError(f"attention.{key} must be a positive integer, got {value!r}")
        if ramp <= 0:
            raise ValueError(f"attention.ramp must be positive, got {ramp}")
        if temp_scale < 0:
            raise ValueError(f"attention.temp_scale must be >= 0, got {temp_scale}")
        if backend not in _BACKENDS:
            raise ValueError(f"attention.backend must be one of {_BACKENDS}, got {backend!r}")
        if global_branch not in _GLOBAL_BRANCHES:
            raise ValueError(f"attention.global_branch must be one of {_GLOBAL_BRANCHES}, got {global_branch!r}")
        if summary_block is not None and int(summary_block) <= 0:
            raise ValueError(f"attention.summary_block must be a positive integer or null, got {summary_block!r}")
        self.max_dist, self.win_size, self.max_span = sizes["max_dist"], sizes["win_size"], sizes["max_span"]
        self.window = min(self.win_size, self.max_dist)
        self.temp_scale, self.focus_iters, self.ramp = float(temp_scale), sizes["focus_iters"], float(ramp)
        self.backend, self.global_branch = backend, global_branch
        self.summary_block = self.window if summary_block is None else int(summary_block)
        self.span_pred = nn.Linear(dims, 1)
        nn.init.xavier_uniform_(self.span_pred.weight)
        nn.init.zeros_(self.span_pred.bias)
        self.gate = nn.Parameter(torch.full((head,), float(gate_init)))  # local weight = sigmoid(gate)
        self.refiner = build_refiner(refiner)
        self.register_buffer("span_mean", torch.zeros(()), persistent=False)
        self.register_buffer("pred_mean", torch.zeros(()), persistent=False)

    def span_factor(self) -> torch.Tensor | float:
        """The refiner's span factor (a 0-dim device tensor), or 1.0 without a refiner."""
        return 1.0 if self.refiner is None else self.refiner.factor

    # --- branches ----------------------------------------------------------------------------
    def _project(self, x, positions):
        """Shared projection: ``x`` ``[B, T, D]`` -> rotated ``q``, ``k``, unrotated ``k``, ``v``,
        each ``[B, H, T, hd]`` (the summary branch averages the unrotated keys)."""
        q, k_raw, v = (split_heads(t, self.head) for t in self.qkv(x).chunk(3, dim=-1))
        return self.position.rotate_qk(q, positions), self.position.rotate_qk(k_raw, positions), k_raw, v

    def _global(self, q, k, k_raw, v, positions, cache):
        """Global branch from the shared projections -> ``[B, H, T, hd]``."""
        if self.global_branch == "summary":
            return self._summary(q, k_raw, v, positions, cache)
        if cache is None:
            return self.attend(q, k, v, is_causal=True)
        past = len(cache)
        k, v = cache.append(k, v)
        if q.shape[-2] == 1:
            return self.attend(q, k, v)
        q_pos = torch.arange(past, past + q.shape[-2], device=q.device)
        mask = causal_mask(q_pos, torch.arange(k.shape[-2], device=q.device))
        return self.attend(q, k, v, mask=mask)

    def _summary(self, q, k_raw, v, positions, cache):
        """Summary branch: rotated ``q``, unrotated ``k_raw``, ``v`` ``[B, H, T, hd]`` -> ``[B, H, T, hd]``.

        A block's summary key/value is the mean of its tokens' (unrotated) keys/values; the key
        is then rotated at the position of the block's last token, so the position scheme sees
        the query-to-block distance. With a cache, ``cache.extra`` holds the summaries and the
        keys/values of the incomplete block; the cache stores no per-token keys (zero-width
        placeholders keep ``len(cache)`` = tokens seen, the model's offset).
        """
        block, past = self.summary_block, 0 if cache is None else len(cache)
        if cache is None:
            k_sum, v_sum = self._block_summaries(k_raw, v, positions)
        else:
            extra = cache.extra
            if "pending_k" in extra:
                k_raw = torch.cat([extra["pending_k"], k_raw], dim=-2)
                v = torch.cat([extra["pending_v"], v], dim=-2)
            pending_pos = torch.cat([extra.get("pending_pos", positions[:0]), positions])
            new_k, new_v = self._block_summaries(k_raw, v, pending_pos)
            done = new_k.shape[-2] * block
            extra["pending_k"], extra["pending_v"] = k_raw[..., done:, :].clone(), v[..., done:, :].clone()
            extra["pending_pos"] = pending_pos[done:].clone()
            k_sum = new_k if "summary_k" not in extra else torch.cat([extra["summary_k"], new_k], dim=-2)
            v_sum = new_v if "summary_v" not in extra else torch.cat([extra["summary_v"], new_v], dim=-2)
            extra["summary_k"], extra["summary_v"] = k_sum, v_sum
            empty = q.new_empty(*q.shape[:-1], 0)
            cache.append(empty, empty)  # [B, H, T, 0]: counts tokens, stores nothing
        res = summary_attention(q, k_sum, v_sum, past, block, return_stats=self.record_stats)
        if not self.record_stats:
            return res
        self._stats["attn/entropy"], self._stats["attn/max_logit"] = res[1]
        return res[0]

    def _block_summaries(self, k_raw, v, positions):
        """Summaries of the complete blocks of ``k_raw``, ``v`` ``[B, H, T, hd]`` (positions
        ``[T]``) -> ``k_sum``, ``v_sum`` ``[B, H, T // block, hd]``, keys rotated at each block's
        last position."""
        block = self.summary_block
        k_sum, v_sum = block_means(k_raw, block), block_means(v, block)
        ends = positions[block - 1 :: block][: k_sum.shape[-2]]
        return self.position.rotate_qk(k_sum, ends), v_sum

    def _span(self, g: torch.Tensor, cache: KVCache | None):
        """Per-query span ``S`` ``[B, T]`` (float32 or wider, also under autocast) from the running
        mean of the global output ``g``.

        ``span_pred(mean_{j<=i} g_j) = mean_{j<=i} (w . g_j) + b`` by linearity, so the running
        mean is taken over the per-token scalars ``w . g_j`` (a ``[B, T]`` cumsum, in float32 at
        least) rather than over ``[B, T, D]``."""
        score = F.linear(g, self.span_pred.weight).squeeze(-1)
        total = score.to(torch.promote_types(score.dtype, torch.float32)).cumsum(dim=1)
        count = torch.arange(1, g.shape[1] + 1, device=g.device, dtype=total.dtype)
        if cache is not None:
            prev_sum, prev_count = cache.extra.get("score_sum"), cache.extra.get("score_count", 0)
            if prev_sum is not None:
                total = total + prev_sum
            count = count + prev_count
            cache.extra["score_sum"], cache.extra["score_count"] = total[:, -1:].detach(), prev_count + g.shape[1]
        pred = torch.sigmoid(total / count + self.span_pred.bias.to(total.dtype))  # float32 or wider
        return pred, (pred * self.span_factor()).clamp(0.0, 1.0)

    def sliding_window(self, q, k, v, span, temp):
        """Local branch over whole sequences: ``[B, H, T, hd]`` -> ``[B, H, T, hd]`` (+ stats).

        The band rule of :func:`famlab.attention.local.sliding_window_attention`, computed in query
        blocks of ``min(64, window)`` (same result, fewer masked scores)."""
        use_flex = self.backend == "flex" or (self.backend == "auto" and q.is_cuda and not self.record_stats)
        if use_flex:
            out = flex_sliding_window_attention(
                q, k, v, self.window, span=span, ramp=self.ramp, temperature=temp, compile=q.is_cuda
            )
            return out, None
        res = blocked_attention(
            q,
            k,
            v,
            block=min(_LOCAL_QUERY_BLOCK, self.window),
            lookback=self.window - 1,
            window=self.window,
            span=span,
            ramp=self.ramp,
            temperature=temp,
            return_stats=self.record_stats,
        )
        return res if self.record_stats else (res, None)

    def _local(self, q, k, v, span, temp, cache):
        """Local branch on the shared rotated ``q``, ``k``, ``v`` ``[B, H, T, hd]`` -> ``[B, H, T, hd]`` (+ stats)."""
        if cache is not None:
            local = cache.extra.setdefault("local", KVCache())
            past, tq = local.extra.get("start", 0) + len(local), q.shape[-2]
            k_all, v_all = local.append(k, v)
            keep = min(self.window - 1, k_all.shape[-2])  # what the next query can still see
            local.k, local.v = k_all[..., k_all.shape[-2] - keep :, :], v_all[..., v_all.shape[-2] - keep :, :]
            local.extra["start"] = past + tq - keep
            q_pos = torch.arange(past, past + tq, device=q.device)
            k_pos = torch.arange(past + tq - k_all.shape[-2], past + tq, device=q.device)
        stats = None
        for it in range(self.focus_iters):
            if cache is None:
                y, stats = self.sliding_window(q, k, v, span, temp)
            else:
                res = dense_local_attention(
                    q,
                    k_all,
                    v_all,
                    q_pos,
                    k_pos,
                    window=self.window,
                    span=span,
                    ramp=self.ramp,
                    temperature=temp,
                    return_stats=self.record_stats,
                )
                y, stats = res if self.record_stats else (res, None)
            if it + 1 < self.focus_iters:
                q = q + y
        return y, stats

    # --- mixer contract ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        past = 0 if cache is None else len(cache)
        q, k, k_raw, v = self._project(x, positions)
        glob = self._global(q, k, k_raw, v, positions, cache)  # [B, H, T, hd]
        pred, s = self._span(merge_heads(glob), cache)
        span = (self.max_span * s)[:, None, :]  # [B, 1, T] tokens
        temp = (1.0 + self.temp_scale * (1.0 - s))[:, None, :]
        local, stats = self._local(q, k, v, span, temp, cache)
        if self.training:
            self.pred_mean.copy_(pred.detach().mean())
            self.span_mean.copy_(span.detach().mean())
        if stats is not None:
            self._stats["attn/local_entropy"], self._stats["attn/local_max_logit"] = stats
        g = torch.sigmoid(self.gate).to(local.dtype)[:, None, None]  # [H, 1, 1] local weight
        empty = min(x.shape[1], max(0, self.summary_block - 1 - past)) if self.global_branch == "summary" else 0
        if empty:  # no complete block yet (global output zero there): weight 1 on the local output
            g = torch.cat([g.new_ones(self.head, empty, 1), g.expand(-1, x.shape[1] - empty, -1)], dim=1)
        return self.proj(merge_heads(torch.lerp(glob, local, g)))  # glob + g * (local - glob)

    def post_step(self, loss: torch.Tensor | None = None) -> None:
        """Feed the detached training loss and the span predictor mean to the refiner."""
        if self.refiner is not None and loss is not None:
            self.refiner.update(loss, self.pred_mean)

    def metrics(self) -> dict[str, torch.Tensor]:
        out = {"span/mean": self.span_mean.clone(), "span/pred": self.pred_mean.clone()}
        if self.refiner is not None:
            out.update(self.refiner.metrics())
            out["refiner/span"] = self.span_mean.clone()
        out.update(self._stats)
        return out
