"""Decoder-only transformer (nanoGPT shape) with pluggable attention and position schemes."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from famlab.attention.cache import KVCache
from famlab.attention.standard import StandardAttention
from famlab.position.none import NoPosition


class MLP(nn.Module):
    """Two-layer GELU feed-forward network, ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, dims: int, ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dims, ratio * dims, bias=False)
        self.proj = nn.Linear(ratio * dims, dims, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm block: ``x + mixer(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, dims: int, mixer: nn.Module, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dims)
        self.attn = mixer
        self.ln_2 = nn.LayerNorm(dims)
        self.mlp = MLP(dims, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, positions, cache: KVCache | None = None):
        x = x + self.drop(self.attn(self.ln_1(x), positions, cache))
        return x + self.mlp(self.ln_2(x))


class TransformerLM(nn.Module):
    """Token ids ``[B, T]`` -> logits ``[B, T, vocab_size]``.

    ``attention`` and ``position`` are factories (Hydra ``_partial_`` nodes): each layer gets
    ``attention(dims=, head=, position=position(head_dim))``. The model collects the mixers'
    optional hooks (``aux_loss``, ``post_step``, ``metrics``) so the training loop never
    reaches into a variant's internals.
    """

    def __init__(
        self,
        vocab_size: int,
        dims: int,
        layers: int,
        heads: int,
        context: int,
        attention: Callable[..., nn.Module] | None = None,
        position: Callable[..., nn.Module] | None = None,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        tie_weights: bool = True,
    ):
        super().__init__()
        for key, value in dict(vocab_size=vocab_size, dims=dims, layers=layers, heads=heads, context=context).items():
            if int(value) <= 0:
                raise ValueError(f"model.{key} must be a positive integer, got {value}")
        if dims % heads != 0:
            raise ValueError(f"model.heads={heads} must divide model.dims={dims}")
        attention = attention or StandardAttention
        position = position or NoPosition
        self.vocab_size, self.dims, self.context = vocab_size, dims, context
        self.tok_emb = nn.Embedding(vocab_size, dims)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dims, attention(dims=dims, head=heads, position=position(dims // heads)), mlp_ratio, dropout)
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dims)
        self.head = nn.Linear(dims, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self) -> list[KVCache]:
        """One empty :class:`KVCache` per layer for incremental decoding."""
        return [KVCache() for _ in self.blocks]

    def forward(self, idx: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        offset = 0 if cache is None else len(cache[0])
        positions = torch.arange(offset, offset + idx.shape[1], device=idx.device)
        x = self.drop(self.tok_emb(idx))
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None if cache is None else cache[i])
        return self.head(self.ln_f(x))

    # --- hooks collected from the mixers and position schemes -----------------------------
    def _hooked(self, name: str):
        """``(layer, bound hook)`` for every mixer and position scheme that defines ``name``; looked up on
        the class first, so modules without it cost no failed attribute lookup (an exception)."""
        for i, block in enumerate(self.blocks):
            attn = block.attn
            position = attn._modules.get("position")  # a registered submodule, else any attribute
            for module in (attn, position if position is not None else getattr(attn, "position", None)):
                if module is not None and (hasattr(type(module), name) or name in module.__dict__):
                    fn = getattr(module, name)
                    if callable(fn):
                        yield i, fn

    def aux_loss(self) -> torch.Tensor | None:
        """Sum of the mixers' auxiliary losses (span penalties, policy losses), or None."""
        losses = [loss for _, fn in self._hooked("aux_loss") if (loss := fn()) is not None]
        return torch.stack([l.reshape(()) for l in losses]).sum() if losses else None

    def post_step(self, loss: torch.Tensor | None = None) -> None:
        """Called after each optimizer step (span clamps, Q-learning updates)."""
        for _, fn in self._hooked("post_step"):
            fn(loss=loss)

    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-layer diagnostics: ``"span/mean"`` of layer 2 becomes ``"span/l2.mean"``."""
        out: dict[str, torch.Tensor] = {}
        for i, fn in self._hooked("metrics"):
            for key, value in fn().items():
                group, _, name = key.partition("/")
                out[f"{group}/l{i}.{name}"] = value
        return out

    def set_record_stats(self, on: bool) -> None:
        """Turn the attention-statistics recording (entropy, max logit) on or off."""
        for block in self.blocks:
            if hasattr(block.attn, "record_stats"):
                block.attn.record_stats = on

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
