"""Gradient sampling for FAM: the random rows x cols sample (spatial) and the temporal probe.

Spatial (the reference FAM sample sizes, docs/provenance.md §1.1): ``numel > 10000`` and ``dim > 1`` -> 64 random
rows x 64 random cols (trailing conv-kernel dims kept), flattened; ``numel > 10000`` and 1-D -> 1000 random
entries; otherwise the whole gradient flattened. Indices come from a seeded ``torch.Generator`` on the gradient's
device, so runs are reproducible and resume exactly. The flat row-major indices of all same-shaped tensors are
built in one batch (one uniform draw and one ``topk`` per axis and shape, whatever the number of tensors of that
shape) and each sample is one ``index_select`` on the flattened gradient, so the sample length is a function of
the shape only and nothing syncs with the host.

Temporal: a fixed sparse random direction per tensor (``PROBE_SIZE`` entries, signs +-1/sqrt(K)), a pure
function of ``(seed, ordinal)`` so it needs no checkpointing.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

ROWS = COLS = 64
FLAT_SAMPLES = 1000
SAMPLE_ABOVE = 10000
PROBE_SIZE = 256


def _first_k_of_permutations(count: int, n: int, k: int, gen: torch.Generator, device) -> torch.Tensor:
    """``[count, min(k, n)]``: ``count`` independent random ``min(k, n)``-subsets of ``range(n)`` in random order
    (distributed as the first k entries of random permutations).

    One batched draw for all ``count`` rows: the indices of the ``k`` largest of ``n`` iid uniforms per row
    (``topk`` of a ``[count, n]`` uniform matrix, O(n) per row), so a shape group costs two ops, not ``count``
    ``randperm`` calls.
    """
    keys = torch.rand(count, n, generator=gen, device=device)
    return keys.topk(min(k, n), dim=1, sorted=True).indices


def sample_indices(shape: tuple[int, ...], count: int, gen: torch.Generator, device) -> torch.Tensor | None:
    """Flat (row-major) indices ``[count, L]`` of ``count`` independent samples of a tensor of ``shape``,
    or None when the sample is the whole tensor (``numel <= SAMPLE_ABOVE``)."""
    numel = math.prod(shape)
    if numel <= SAMPLE_ABOVE:
        return None
    if len(shape) == 1:
        return _first_k_of_permutations(count, numel, FLAT_SAMPLES, gen, device)
    rest = math.prod(shape[2:])
    rows = _first_k_of_permutations(count, shape[0], ROWS, gen, device)
    cols = _first_k_of_permutations(count, shape[1], COLS, gen, device)
    idx = rows[:, :, None] * (shape[1] * rest) + cols[:, None, :] * rest  # [count, r, c]
    if rest > 1:
        idx = idx[..., None] + torch.arange(rest, device=device)  # [count, r, c, rest]
    return idx.reshape(count, -1)


def spatial_samples(grads: list[torch.Tensor], generator_for, decay=None) -> list[torch.Tensor]:
    """Spatial samples ``[L_i]`` of each gradient; ``generator_for(device)`` returns the seeded generator.

    ``decay=(params, wd)``: samples of the coupled-L2 gradient ``g_i + wd * p_i`` at the same indices, computed
    on the sampled entries only (``params[i]`` has the shape of ``grads[i]``)."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for k, g in enumerate(grads):
        groups[(tuple(g.shape), g.device)].append(k)
    out: list[torch.Tensor] = [None] * len(grads)  # type: ignore[list-item]
    for (shape, device), members in groups.items():
        idx = sample_indices(shape, len(members), generator_for(device), device)
        for row, k in enumerate(members):
            flat = grads[k].reshape(-1)  # a view for contiguous gradients (the usual case)
            out[k] = flat if idx is None else flat.index_select(0, idx[row])
            if decay is not None:
                p = decay[0][k].detach().reshape(-1)
                out[k] = torch.add(out[k], p if idx is None else p.index_select(0, idx[row]), alpha=decay[1])
    return out


def spatial_sample(g: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Spatial sample ``[L]`` of one gradient (``L`` depends only on ``g.shape``)."""
    return spatial_samples([g], lambda device: gen)[0]


def temporal_probe(numel: int, seed: int, ordinal: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed sparse random direction: entry indices ``[K]`` (with replacement) and signs ``[K]`` (+-1/sqrt(K))."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + ordinal)
    idx = torch.randint(0, numel, (PROBE_SIZE,), generator=gen)
    sign = (torch.randint(0, 2, (PROBE_SIZE,), generator=gen) * 2 - 1).float() / math.sqrt(PROBE_SIZE)
    return idx.to(device), sign.to(device)
