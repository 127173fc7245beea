"""``attention=update_gated``: causal attention whose cached keys/values are updated by content.

Two predictors, ``should_update_key(x)`` / ``should_update_value(x)`` = ``Linear(D, D/4) -> ReLU
-> Linear(D/4, 1) -> sigmoid`` compared with ``update_threshold``, decide per (batch element,
position), on the position's own layer input ``x`` ``[B, T, D]``, whether the KV cache stores that
position's key/value exactly. Where no update is taken the cache keeps a low-precision copy
(rounded to ``cache_dtype``, default float8 e4m3: an emulated cheap cache, values are rounded and
the tensors keep the model dtype; FP8 formats: Micikevicius et al. 2022; KV-cache quantisation:
KIVI, Liu et al. 2024). The decision is made once, when the position is written. The current
step's tokens always see each other exactly, so with ``update_threshold=0`` (every update taken)
cached generation equals uncached generation. Counters ``cache.extra["skipped_updates"]`` and
``["total_updates"]`` (device int64 tensors; a key and a value count separately).

Training (no cache): the forward is exactly standard causal attention; the predictors learn
through a straight-through gate ``k + (g - sg(g)) * (k - sg(round(k)))`` (value 0, gradient = how
much the loss would change between the exact and the rounded key, to first order), and
``aux_loss() = update_cost * (mean p_key + mean p_value)`` prices exact storage, so the
predictors keep exact K/V only where it pays.
"""

from __future__ import annotations

import torch
from torch import nn

from famlab.attention.cache import KVCache
from famlab.attention.core import AttentionBase, causal_mask
from famlab.attention.routing import straight_through

CACHE_DTYPES = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _predictor(dims: int) -> nn.Module:
    hidden = max(1, dims // 4)
    return nn.Sequential(nn.Linear(dims, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class UpdatePredictors(nn.Module):
    """Per-token update predictors; ``x`` ``[B, T, D]`` -> probabilities / booleans ``[B, T]``.

    An update is taken where the probability is ``>= update_threshold`` (so 0 takes all).
    """

    def __init__(self, dims: int, update_threshold: float = 0.5):
        super().__init__()
        if not 0.0 <= update_threshold <= 1.0:
            raise ValueError(f"attention.update_threshold must be in [0, 1], got {update_threshold}")
        self.update_threshold = update_threshold
        self.key_predictor, self.value_predictor = _predictor(dims), _predictor(dims)

    def key_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.key_predictor(x)).squeeze(-1)

    def value_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.value_predictor(x)).squeeze(-1)

    def should_update_key(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_prob(x) >= self.update_threshold

    def should_update_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.value_prob(x) >= self.update_threshold


class UpdateGatedAttention(AttentionBase):
    """Causal MHA with update-gated K/V caching; ``[B, T, D] -> [B, T, D]`` (module docstring)."""

    def __init__(
        self,
        dims: int,
        head: int,
        position=None,
        update_threshold: float = 0.5,
        cache_dtype: str = "float8_e4m3fn",
        update_cost: float = 0.01,
        bias: bool = False,
    ):
        super().__init__(dims, head, position, bias=bias)
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"attention.cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {cache_dtype!r}")
        if update_cost < 0:
            raise ValueError(f"attention.update_cost must be >= 0, got {update_cost}")
        self.gates = UpdatePredictors(dims, update_threshold)
        self.cache_dtype, self.update_cost = CACHE_DTYPES[cache_dtype], update_cost
        self._aux: torch.Tensor | None = None
        self._acc: torch.Tensor | None = None  # [key updates, value updates, count]

    def should_update_key(self, x: torch.Tensor) -> torch.Tensor:
        return self.gates.should_update_key(x)

    def should_update_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.gates.should_update_value(x)

    def stale(self, t: torch.Tensor) -> torch.Tensor:
        """The low-precision copy a skipped update leaves in the cache (same dtype as ``t``)."""
        return t.to(self.cache_dtype).to(t.dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        self._aux = None
        q, k, v = self.project_qkv(x, positions)
        if cache is None:
            pk, pv = self.gates.key_prob(x), self.gates.value_prob(x)
            thr = self.gates.update_threshold
            gk = straight_through(pk, pk >= thr)[:, None, :, None]
            gv = straight_through(pv, pv >= thr)[:, None, :, None]
            k = k + (gk - gk.detach()) * (k - self.stale(k).detach())  # value unchanged, grad to gk
            v = v + (gv - gv.detach()) * (v - self.stale(v).detach())
            if self.training:
                self._aux = self.update_cost * (pk.mean() + pv.mean())
            self._accumulate(pk >= thr, pv >= thr)
            return self.out(self.attend(q, k, v, is_causal=True))
        return self._cached(x, q, k, v, positions, cache)

    def _cached(self, x, q, k, v, positions, cache: KVCache) -> torch.Tensor:
        past = len(cache)
        k_all = k if cache.k is None else torch.cat([cache.k, k], dim=-2)
        v_all = v if cache.v is None else torch.cat([cache.v, v], dim=-2)
        k_pos = torch.arange(k_all.shape[-2], device=x.device)
        mask = causal_mask(positions - positions[0] + past, k_pos)
        y = self.out(self.attend(q, k_all, v_all, mask=mask))
        uk, uv = self.should_update_key(x), self.should_update_value(x)  # [B, T]
        cache.append(
            torch.where(uk[:, None, :, None], k, self.stale(k)), torch.where(uv[:, None, :, None], v, self.stale(v))
        )
        skipped = (~uk).sum() + (~uv).sum()
        extra = cache.extra
        if "skipped_updates" not in extra:
            extra["skipped_updates"] = torch.zeros((), dtype=torch.long, device=x.device)
            extra["total_updates"] = torch.zeros((), dtype=torch.long, device=x.device)
        extra["skipped_updates"] = extra["skipped_updates"] + skipped
        extra["total_updates"] = extra["total_updates"] + 2 * uk.numel()
        self._accumulate(uk, uv)
        return y

    def aux_loss(self) -> torch.Tensor | None:
        """Price of exact storage from the last training forward (None otherwise)."""
        return self._aux

    def _accumulate(self, uk: torch.Tensor, uv: torch.Tensor) -> None:
        row = torch.stack([uk.float().mean(), uv.float().mean(), uk.new_ones((), dtype=torch.float)]).detach()
        self._acc = row if self._acc is None or self._acc.device != row.device else self._acc + row

    def metrics(self) -> dict[str, torch.Tensor]:
        """``update/key_rate``, ``update/value_rate`` (mean since the last call) + attention stats."""
        out = super().metrics()
        if self._acc is not None:
            out["update/key_rate"], out["update/value_rate"] = self._acc[0] / self._acc[2], self._acc[1] / self._acc[2]
            self._acc = None
        return out
