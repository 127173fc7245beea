"""``position=rotary``: rotary position embedding (RoPE) with learnable frequencies.

:class:`Rotary` turns the interleaved feature pairs ``(2k, 2k+1)`` of the first ``rot_dim``
features of each query and key ``[B, H, T, dim]`` by ``pos · f_k`` (RoFormer, Su et al., 2021,
arXiv:2104.09864), so ``q·k`` depends only on the position offset. Frequencies are
``f_k = θ'^(-2k/rot_dim)`` (``freqs_for="lang"``) or ``k·2π/θ'`` (``"legacy_linear"``) with
``θ' = θ·ρ^(dim/(dim-2))`` (``ρ = theta_rescale_factor``), learnable unless ``learned_freq=False``.

It is also the base of :class:`~famlab.position.quaternion.QuaternionRotary` (triplets about
learned axes) and :class:`~famlab.position.projection.ProjectionRotary` (a learned subspace): they
override the layout (:meth:`Rotary._layout`), the angles and the rotation of the groups.

:func:`RotaryEmbedding` builds any of the three from one flag-style signature
(``use_quaternion``, ``use_projection``), the constructor that older configs and callers name.
The pair-rotation math lives in :mod:`famlab.position.rotation_math` (re-exported here).
"""

from __future__ import annotations

import warnings

import torch
from einops import repeat
from torch import nn

from famlab.position import quaternion_math
from famlab.position.base import check_positions
from famlab.position.rotation_math import (
    FREQ_LAYOUTS,
    apply_rotary,
    init_freqs,
    learned_rotations,
    rotate_half,
    rotate_pairs,
)

__all__ = [
    "FREQ_LAYOUTS",
    "Rotary",
    "RotaryEmbedding",
    "apply_rotary",
    "init_freqs",
    "learned_rotations",
    "rotate_half",
    "rotate_pairs",
]


class Rotary(nn.Module):
    """Position scheme ``rotate_qk(t [B, H, T, dim], positions [T]) -> [B, H, T, dim]`` (RoPE).

    ``rot_dim`` (default: the even part of ``dim``) features rotate as ``rot_dim // 2`` pairs, the
    rest pass; ``num_freqs`` sets ``rot_dim = 2 · num_freqs`` instead. Parameters: ``freqs``
    ``[n]`` (one per rotation group).
    """

    use_quaternion = False  # the flags of RotaryEmbedding(...) that select this class
    use_projection = False

    def __init__(
        self,
        dim: int,
        theta: float = 10000.0,
        num_freqs: int | None = None,
        learned_freq: bool = True,
        freqs_for: str = "lang",
        theta_rescale_factor: float = 1.0,
        rot_dim: int | None = None,
    ):
        super().__init__()
        if int(dim) < 2:
            raise ValueError(f"position: head dim must be >= 2, got {dim}")
        if freqs_for not in FREQ_LAYOUTS:
            raise ValueError(f"position.freqs_for must be one of {FREQ_LAYOUTS}, got {freqs_for!r}")
        if theta <= 0 or theta_rescale_factor <= 0:
            raise ValueError("position.theta and position.theta_rescale_factor must be > 0")
        self.head_dim, self.freqs_for = int(dim), freqs_for
        self.rot_dim, self.num_triplets, self.num_pairs = self._layout(self.head_dim, rot_dim, num_freqs)
        n = self.num_triplets + self.num_pairs
        if num_freqs is not None and num_freqs != n:
            raise ValueError(f"position.num_freqs={num_freqs} does not match rot_dim={self.rot_dim} (needs {n})")
        if n == 1 and freqs_for == "legacy_linear":
            warnings.warn("position: num_freqs=1 with freqs_for=legacy_linear is one zero frequency: no rotation")
        theta_eff = theta * theta_rescale_factor ** (dim / (dim - 2)) if dim > 2 else theta
        self.freqs = nn.Parameter(init_freqs(n, theta_eff, freqs_for), requires_grad=learned_freq)

    def _layout(self, dim: int, rot_dim: int | None, num_freqs: int | None) -> tuple[int, int, int]:
        """``(rotated width, triplets, pairs)`` of a ``dim``-feature head: interleaved pairs."""
        if rot_dim is None:
            rot_dim = 2 * num_freqs if num_freqs is not None else dim - dim % 2
        check_rot_dim(rot_dim, dim)
        if rot_dim % 2:
            raise ValueError(f"position.rot_dim must be even for the standard rotary path, got {rot_dim}")
        return int(rot_dim), 0, int(rot_dim) // 2

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Angle of every rotation group at every position, ``[T] -> [T, n]`` (``pos · f_k``, fp32)."""
        return positions.to(self.freqs.dtype)[:, None] * self.freqs

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Interleaved angle table ``[L, 2n]`` (each angle twice) for positions ``t`` ``[L]``."""
        return repeat(self.angles(t), "... n -> ... (n r)", r=2)

    def _rotate_groups(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate the groups at the start of ``x`` ``[..., T, w]`` at ``positions`` ``[T]``; the rest pass."""
        return rotate_pairs(x, self.angles(positions))

    def rotate_qk(self, t: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate queries or keys ``t`` ``[B, H, T, dim]`` at absolute ``positions`` ``[T]`` (default ``arange(T)``)."""
        positions = check_positions(t, positions, self.head_dim)
        return self._rotate_groups(t, positions).to(t.dtype)

    # methods of the flag-style RotaryEmbedding API, on every rotary scheme --------------------
    def q_rotation(self, x: torch.Tensor, theta, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate 3-vectors ``x`` ``[..., 3]`` by ``theta`` about axis ``u`` (see
        :func:`famlab.position.quaternion_math.q_rotation`). ``v`` is accepted for the old
        signature; a value is refused rather than ignored."""
        if v is not None:
            raise ValueError("RotaryEmbedding.q_rotation: v is not supported (rotation is by theta about u)")
        return quaternion_math.q_rotation(x, theta, u)

    def project_and_rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Subspace rotation of ``x`` ``[..., T, dim]``; only :class:`ProjectionRotary` has one."""
        raise ValueError(
            "RotaryEmbedding.project_and_rotate needs use_projection=True (position=projection, ProjectionRotary)"
        )

    @staticmethod
    def learned_rotations(rotations, t, start_index: int = 0, freq_ranges=None):
        """Rotate interleaved pairs of ``t`` by the angles ``rotations`` (see :func:`learned_rotations`)."""
        return learned_rotations(rotations, t, start_index=start_index, freq_ranges=freq_ranges)

    @torch.no_grad()
    def metrics(self) -> dict[str, torch.Tensor]:
        """Learned values (detached 0-d tensors): ``position/freq_mean``, ``position/freq_std``."""
        f = self.freqs.detach().float()
        return {"position/freq_mean": f.mean(), "position/freq_std": f.std(correction=0)}

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rot_dim={self.rot_dim}, freqs={self.freqs.numel()}"


def check_rot_dim(rot_dim: int, dim: int) -> None:
    """Refuse a rotated width outside ``[1, dim]``."""
    if not 0 < rot_dim <= dim:
        raise ValueError(f"position.rot_dim must be in [1, head dim={dim}], got {rot_dim}")


def RotaryEmbedding(
    dim: int,
    theta: float = 10000.0,
    num_freqs: int | None = None,
    learned_freq: bool = True,
    use_quaternion: bool = False,
    rot_scale: float = 1.0,
    rot_count: float = 1,
    use_projection: bool = False,
    proj_dim: int = 3,
    proj_scale: float = 0.1,
    freqs_for: str = "lang",
    theta_rescale_factor: float = 1.0,
    rot_dim: int | None = None,
) -> Rotary:
    """Build the rotary scheme the flags select, with the arguments in this positional order.

    ``use_projection`` -> :class:`~famlab.position.projection.ProjectionRotary` (triplets in the
    subspace if ``use_quaternion``, else pairs); ``use_quaternion`` alone ->
    :class:`~famlab.position.quaternion.QuaternionRotary`; neither -> :class:`Rotary`. Arguments
    the chosen class has no use for (``proj_dim``/``proj_scale`` without ``use_projection``,
    ``rot_scale`` for plain RoPE) are ignored; ``rot_count`` must be > 0 in every case. The result
    equals the class built from the matching ``conf/position/*.yaml`` with the same values.
    """
    if rot_count <= 0:
        raise ValueError(f"position.rot_count must be > 0, got {rot_count}")
    common = dict(
        theta=theta,
        num_freqs=num_freqs,
        learned_freq=learned_freq,
        freqs_for=freqs_for,
        theta_rescale_factor=theta_rescale_factor,
        rot_dim=rot_dim,
    )
    if use_projection:
        from famlab.position.projection import ProjectionRotary

        return ProjectionRotary(
            dim,
            **common,
            rot_scale=rot_scale,
            rot_count=rot_count,
            use_quaternion=use_quaternion,
            proj_dim=proj_dim,
            proj_scale=proj_scale,
        )
    if use_quaternion:
        from famlab.position.quaternion import QuaternionRotary

        return QuaternionRotary(dim, **common, rot_scale=rot_scale, rot_count=rot_count)
    return Rotary(dim, **common)
