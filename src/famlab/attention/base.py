"""Mixer contract: what every ``attention=`` option builds.

An attention option's config is a Hydra ``_partial_`` node; the model calls it once per layer
with keywords, ``attention(dims=, head=, position=position(head_dim))``, and gets a
:class:`Mixer`. ``position`` is a position scheme (:class:`famlab.position.base.PositionScheme`)
that the mixer applies to its queries and keys. Options whose constructor has further positional
arguments take ``position`` by keyword only.

A mixer maps ``x`` ``[B, T, dims]`` (the block's normalised input) to ``[B, T, dims]``, which
the block adds to its residual stream: ``x + mixer(ln(x), positions, cache)``. ``positions`` is
a LongTensor ``[T]`` of absolute token positions (``arange(T) + offset`` when decoding with a
cache); ``cache`` is the layer's :class:`famlab.attention.cache.KVCache` or ``None``.

Optional hooks, all looked up by :class:`famlab.model.transformer.TransformerLM` (and on the
mixer's ``position`` module) with ``getattr``; a mixer defines those it needs:

* ``aux_loss() -> Tensor | None``: a scalar added to the training loss (span penalties, prices);
* ``post_step(loss=None)``: called after each optimizer step with the detached training loss
  (clamps, Q-learning updates); never reads tensors back to the host;
* ``metrics() -> dict[str, Tensor]``: detached device tensors keyed ``"group/name"`` (such as
  ``"span/mean"``), logged every N steps;
* ``record_stats: bool``: when present, the training loop sets it every N steps to ask for the
  attention entropy and largest logit (:class:`famlab.attention.core.AttentionBase` does this).

Masks are boolean, ``True`` = may attend (as in ``F.scaled_dot_product_attention``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from famlab.attention.cache import KVCache


class Mixer(Protocol):
    """A token mixer: ``forward(x [B, T, dims], positions [T], cache) -> [B, T, dims]``."""

    def __call__(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor: ...


class MixerFactory(Protocol):
    """What an ``attention=`` config instantiates to: builds one :class:`Mixer` per layer."""

    def __call__(self, *, dims: int, head: int, position: nn.Module) -> Mixer: ...
