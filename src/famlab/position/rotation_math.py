"""Rotation math shared by the rotary schemes: interleaved pair rotations, frequency layouts, subspaces.

* :func:`rotate_half`, :func:`apply_rotary`, :func:`learned_rotations`: the real-valued RoPE
  forms of RoFormer (Su et al., 2021, arXiv:2104.09864) as in lucidrains ``rotary-embedding-torch``.
* :func:`rotate_pairs`: the same pair rotation as one complex multiplication (the hot path).
* :func:`init_freqs`: angular speed of each rotation group, geometric (``lang``) or linear.
* :func:`orthonormal_rows`, :func:`project_and_rotate`: rotate a learned orthonormal subspace of
  a head and leave its complement unchanged (``position=projection``).

Pairs are interleaved: pair ``k`` is features ``(2k, 2k+1)``.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

FREQ_LAYOUTS = ("lang", "legacy_linear")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs ``(x0, x1), (x2, x3), ... -> (-x1, x0, -x3, x2, ...)``, ``[..., 2n]``."""
    x = rearrange(x, "... (n r) -> ... n r", r=2)
    x1, x2 = x.unbind(-1)
    return rearrange(torch.stack((-x2, x1), dim=-1), "... n r -> ... (n r)")


def apply_rotary(freqs, t, start_index: int = 0, scale=1.0, seq_dim: int = -2, freqs_seq_dim: int | None = None):
    """Rotate features ``[start_index, start_index + freqs.shape[-1])`` of ``t`` by angles ``freqs``.

    lucidrains ``apply_rotary_emb``: ``freqs`` ``[L, 2F]`` (interleaved duplicated angles) or any
    shape broadcasting against ``t``; with a 2-D ``freqs`` (or a 3-D ``t``) its last
    ``t.shape[seq_dim]`` rows are used. Returns ``x·cos·scale + rotate_half(x)·sin·scale`` on the
    rotated slice, the rest unchanged, in ``t``'s dtype.
    """
    dtype = t.dtype
    if freqs_seq_dim is None and (freqs.ndim == 2 or t.ndim == 3):
        freqs_seq_dim = 0
    if t.ndim == 3 or freqs_seq_dim is not None:
        seq_len, have = t.shape[seq_dim], freqs.shape[freqs_seq_dim]
        if have < seq_len:
            raise ValueError(f"apply_rotary: freqs cover {have} positions but t has {seq_len}")
        freqs = freqs.narrow(freqs_seq_dim, have - seq_len, seq_len)
    rot_dim = freqs.shape[-1]
    end = start_index + rot_dim
    if rot_dim % 2 or end > t.shape[-1]:
        raise ValueError(f"apply_rotary: cannot rotate features [{start_index}, {end}) of width {t.shape[-1]}")
    middle = t[..., start_index:end]
    rotated = (middle * (freqs.cos() * scale) + rotate_half(middle) * (freqs.sin() * scale)).to(dtype)
    if start_index == 0 and end == t.shape[-1]:
        return rotated
    return torch.cat((t[..., :start_index], rotated, t[..., end:]), dim=-1)


def learned_rotations(rotations, t, start_index: int = 0, freq_ranges=None):
    """lucidrains ``apply_learned_rotations``: rotate pairs of ``t`` by (learned) angles ``rotations``.

    ``rotations`` ``[..., n]`` (or ``[..., r]`` times ``freq_ranges`` ``[f]`` -> ``n = r·f``);
    each angle turns one interleaved pair starting at ``start_index``.
    """
    if freq_ranges is not None:
        rotations = rearrange(rotations[..., None] * freq_ranges, "... r f -> ... (r f)")
    rotations = repeat(rotations, "... n -> ... (n r)", r=2)
    return apply_rotary(rotations, t, start_index=start_index)


def rotate_pairs(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Turn interleaved pairs ``(x_2k, x_2k+1)`` of ``x`` ``[..., T, w]`` by ``angles`` ``[T, n]`` (``2n <= w``).

    The hot path of every pair rotation: the same map as ``learned_rotations(angles, x)`` computed
    as one complex multiplication ``(x_2k + i x_2k+1) e^{i angle}`` in at least fp32 (several times
    cheaper forward and backward than ``x cos + rotate_half(x) sin``). Features past ``2n`` pass;
    the result has ``x``'s dtype. Under ``torch.compile`` it uses the real-valued form instead.
    """
    n = angles.shape[-1]
    if 2 * n > x.shape[-1]:
        raise ValueError(f"rotate_pairs: {n} angles need {2 * n} features, tensor has {x.shape[-1]}")
    if torch.compiler.is_compiling():
        return learned_rotations(angles, x)
    dtype = torch.promote_types(torch.promote_types(x.dtype, angles.dtype), torch.float32)
    head, tail = (x, None) if 2 * n == x.shape[-1] else x.split([2 * n, x.shape[-1] - 2 * n], dim=-1)
    head = head.to(dtype).unflatten(-1, (n, 2))
    if head.stride(-1) != 1 or head.storage_offset() % 2 or any(s % 2 for s in head.stride()[:-1]):
        head = head.contiguous()  # view_as_complex needs an even-strided layout
    turn = torch.complex(angles.cos(), angles.sin()).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    rotated = torch.view_as_real(torch.view_as_complex(head) * turn).flatten(-2).to(x.dtype)
    return rotated if tail is None else torch.cat((rotated, tail), dim=-1)


def init_freqs(n: int, theta: float, freqs_for: str) -> torch.Tensor:
    """Angular speeds (radians per position) of ``n`` rotation groups: ``θ^(-k/n)`` or ``k·2π/θ``."""
    k = torch.arange(n, dtype=torch.float64)
    if freqs_for == "lang":
        return (theta ** (-k / max(n, 1))).float()
    return (k * 2 * torch.pi / theta).float()


def orthonormal_rows(weight: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows spanning ``weight``'s rows (``[p, d] -> [p, d]``, ``p <= d``).

    Gram-Schmidt over the ``p`` rows (a QR with positive ``diag(R)``): continuous and
    differentiable in ``weight``, equal to ``weight`` when its rows are already orthonormal, and
    pure elementwise work (no solver launch, no host sync). ``p`` is tiny (``proj_dim``).
    """
    rows: list[torch.Tensor] = []
    for row in weight.unbind(0):
        for _ in range(2):  # "twice is enough": re-orthogonalise for fp32 accuracy
            for prev in rows:
                row = row - (row * prev).sum() * prev
        rows.append(row / row.norm().clamp_min(1e-12))
    return torch.stack(rows, 0)


def project_and_rotate(x: torch.Tensor, basis: torch.Tensor, rotate) -> torch.Tensor:
    """Rotate the subspace spanned by ``basis`` ``[p, d]`` (orthonormal rows) and keep its complement.

    ``x`` ``[..., d]``; ``rotate`` maps the coordinates ``[..., p]`` to rotated coordinates of the
    same norm. Returns ``x + Aᵀ(rotate(Ax) - Ax)``, an orthogonal map of ``x`` when ``rotate`` is one.
    """
    z = x @ basis.transpose(0, 1).to(x.dtype)
    return x + (rotate(z) - z) @ basis.to(x.dtype)
