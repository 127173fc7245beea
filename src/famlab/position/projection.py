"""``position=projection``: rotate only a learned ``proj_dim``-dimensional subspace of each head.

:class:`ProjectionRotary` keeps orthonormal rows ``A`` ``[proj_dim, dim]`` (Gram-Schmidt of a
learnable matrix, :func:`~famlab.position.rotation_math.orthonormal_rows`) and maps each query and
key ``x`` ``[B, H, T, dim]`` at position ``pos`` to ``y = x + Aᵀ(R_pos - I)Ax``: the coordinates
``Ax`` rotate as in :class:`~famlab.position.quaternion.QuaternionRotary` (triplets about
learnable axes, ``use_quaternion=True``) or as RoPE pairs (``use_quaternion=False``), and the
complement of the subspace passes unchanged. The map is exactly orthogonal and relative (``q·k``
depends only on the offset). ``proj_scale`` is the gain of the orthogonal initialisation of the
raw matrix; it does not scale the map.
"""

from __future__ import annotations

import torch
from torch import nn

from famlab.position.base import check_positions
from famlab.position.quaternion import QuaternionRotary, triplet_layout
from famlab.position.rotation_math import orthonormal_rows, project_and_rotate

__all__ = ["ProjectionRotary"]


class ProjectionRotary(QuaternionRotary):
    """Position scheme ``rotate_qk(t [B, H, T, dim], positions [T]) -> [B, H, T, dim]`` (subspace rotary).

    The rotated width is ``proj_dim`` (``2 <= proj_dim <= dim``); ``rot_dim`` and ``num_freqs``
    do not apply and must stay ``None``. Parameters: those of :class:`QuaternionRotary` (``axes``
    only with triplets) and ``proj`` ``[proj_dim · dim]`` (the raw subspace matrix, stored flat so
    weight decay skips it: its scale is normalised away); buffer ``basis_init`` ``[proj_dim, dim]``.
    """

    use_projection = True
    flat_parameters = ("axes", "proj")

    def __init__(
        self,
        dim: int,
        theta: float = 10000.0,
        num_freqs: int | None = None,
        learned_freq: bool = True,
        rot_scale: float = 1.0,
        rot_count: float = 1,
        freqs_for: str = "lang",
        theta_rescale_factor: float = 1.0,
        rot_dim: int | None = None,
        use_quaternion: bool = True,
        proj_dim: int = 3,
        proj_scale: float = 0.1,
    ):
        if rot_dim is not None or num_freqs is not None:
            raise ValueError("position.rot_dim/num_freqs do not apply with use_projection; set position.proj_dim")
        if not 2 <= proj_dim <= dim:
            raise ValueError(f"position.proj_dim must be in [2, head dim={dim}], got {proj_dim}")
        # read by _layout during the base constructor (plain attributes, allowed before Module.__init__)
        self.use_quaternion, self.proj_dim = bool(use_quaternion), int(proj_dim)
        super().__init__(
            dim,
            theta=theta,
            learned_freq=learned_freq,
            rot_scale=rot_scale,
            rot_count=rot_count,
            freqs_for=freqs_for,
            theta_rescale_factor=theta_rescale_factor,
        )
        raw = nn.init.orthogonal_(torch.empty(self.proj_dim, self.head_dim), gain=proj_scale)
        self.proj = nn.Parameter(raw.reshape(-1))
        self.register_buffer("basis_init", self.subspace.detach().clone())

    def _layout(self, dim: int, rot_dim: int | None, num_freqs: int | None) -> tuple[int, int, int]:
        """``(proj_dim, triplets, pairs)``: the triplet layout, or ``proj_dim // 2`` pairs."""
        if self.use_quaternion:
            return triplet_layout(self.proj_dim)
        return self.proj_dim, 0, self.proj_dim // 2

    @property
    def subspace(self) -> torch.Tensor:
        """Orthonormal rows ``A`` ``[proj_dim, dim]`` of the rotated subspace."""
        return orthonormal_rows(self.proj.view(self.rot_dim, self.head_dim))

    def rotate_qk(self, t: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``t + Aᵀ(R_pos - I)A t`` for ``t`` ``[B, H, T, dim]`` at ``positions`` ``[T]`` (default ``arange(T)``)."""
        positions = check_positions(t, positions, self.head_dim)
        return project_and_rotate(t, self.subspace, lambda z: self._rotate_groups(z, positions)).to(t.dtype)

    def project_and_rotate(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`rotate_qk` of ``x`` ``[..., T, dim]`` at positions ``0..T-1``."""
        return self.rotate_qk(x)

    @torch.no_grad()
    def metrics(self) -> dict[str, torch.Tensor]:
        """Adds ``position/subspace_drift``: ``1 - ‖A A₀ᵀ‖²_F / proj_dim`` (0 = the initial subspace)."""
        out = super().metrics()
        overlap = self.subspace.detach() @ self.basis_init.transpose(0, 1)
        out["position/subspace_drift"] = 1 - overlap.pow(2).sum() / self.rot_dim
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, proj_dim={self.proj_dim}"
