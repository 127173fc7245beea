"""Rotary position embeddings (``position=rotary|quaternion|projection``) and learned rotations.

``RotaryEmbedding`` keeps the seed's signature (spec section 2.1) with three paths:

* standard (default): interleaved RoPE (RoFormer; lucidrains ``rotary-embedding-torch``) on the
  first ``rot_dim`` features, frequencies ``θ'^(-2k/rot_dim)`` (``freqs_for="lang"``) or the
  seed's linear ``k·2π/θ'`` (``freqs_for="legacy_linear"``), ``θ' = θ·ρ^(dim/(dim-2))``.
* quaternion (``use_quaternion=True``): feature triplets turn about learnable axes by
  ``θ_k · pos · rot_scale · rot_count`` (see :mod:`famlab.position.quaternion`); a leftover pair
  (``rot_dim % 3 == 2``) gets a plain 2-D rotation, a leftover single feature passes through.
* projection (``use_projection=True``): only a learned orthonormal ``proj_dim``-subspace is
  rotated (triplets about learned axes if ``use_quaternion`` else pairs), ``y = x + Aᵀ(R-I)Ax``.

Differences from the seed: ``num_freqs`` defaults to ``rot_dim // 2`` (the seed's default of one
zero frequency is the identity); the quaternion angle grows with position (the seed's was the same
for every token, so it carried no position); direction is the sign of the learnable ``rot_scale``
(the seed's ``dparam`` started at 0 with ~zero gradient); ``rot_count`` is a constant angle
multiplier (the seed repeated dense matmuls); the projection is built at construction and is exactly
orthogonal (``proj_scale`` is only the init gain of the raw subspace parameter). All paths are
relative: ``q·k`` depends only on the position offset.
"""

from __future__ import annotations

import warnings

import torch
from einops import rearrange, repeat
from torch import nn

from famlab.position import quaternion
from famlab.position.base import check_positions
from famlab.position.quaternion import apply_bands, fibonacci_axes, orthonormal_rows, project_and_rotate, rotation_bands

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


class RotaryEmbedding(nn.Module):
    """Position scheme ``rotate_qk(t [B, H, T, dim], positions [T]) -> [B, H, T, dim]`` (see module doc)."""

    def __init__(
        self,
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
    ):
        super().__init__()
        if int(dim) < 2:
            raise ValueError(f"position: head dim must be >= 2, got {dim}")
        if freqs_for not in FREQ_LAYOUTS:
            raise ValueError(f"position.freqs_for must be one of {FREQ_LAYOUTS}, got {freqs_for!r}")
        if theta <= 0 or theta_rescale_factor <= 0:
            raise ValueError("position.theta and position.theta_rescale_factor must be > 0")
        if rot_count <= 0:
            raise ValueError(f"position.rot_count must be > 0, got {rot_count}")
        self.head_dim, self.freqs_for = int(dim), freqs_for
        self.use_quaternion, self.use_projection = bool(use_quaternion), bool(use_projection)
        theta_eff = theta * theta_rescale_factor ** (dim / (dim - 2)) if dim > 2 else theta
        group = 3 if use_quaternion else 2
        if use_projection:
            if rot_dim is not None or num_freqs is not None:
                raise ValueError("position.rot_dim/num_freqs do not apply with use_projection; set position.proj_dim")
            if not 2 <= proj_dim <= dim:
                raise ValueError(f"position.proj_dim must be in [2, head dim={dim}], got {proj_dim}")
            width = int(proj_dim)
        else:
            width = self._rot_width(dim, rot_dim, num_freqs, group)
        self.rot_dim = width
        self.num_triplets = width // 3 if use_quaternion else 0
        self.num_pairs = int(width % 3 == 2) if use_quaternion else width // 2
        n = self.num_triplets + self.num_pairs
        if num_freqs is not None and num_freqs != n:
            raise ValueError(f"position.num_freqs={num_freqs} does not match rot_dim={width} (needs {n})")
        if n == 1 and freqs_for == "legacy_linear":
            warnings.warn("position: num_freqs=1 with freqs_for=legacy_linear is one zero frequency: no rotation")
        self.freqs = nn.Parameter(init_freqs(n, theta_eff, freqs_for), requires_grad=learned_freq)
        for name in ("rscale", "axes", "proj"):
            self.register_parameter(name, None)
        if use_quaternion or use_projection:
            self.rscale = nn.Parameter(torch.tensor(float(rot_scale)))
            self.register_buffer("rot", torch.tensor(float(rot_count)))
        if self.num_triplets:
            # stored flat (1-D) so the optimizers' ``ndim >= 2`` rule keeps them out of weight decay:
            # their scale is normalised away, so decay would only shrink them and inflate their steps
            self.axes = nn.Parameter(fibonacci_axes(self.num_triplets).reshape(-1))
            self.register_buffer("axes_init", fibonacci_axes(self.num_triplets))
        if use_projection:
            self.proj = nn.Parameter(nn.init.orthogonal_(torch.empty(width, dim), gain=proj_scale).reshape(-1))
            self.register_buffer("basis_init", self.subspace.detach().clone())

    @staticmethod
    def _rot_width(dim: int, rot_dim: int | None, num_freqs: int | None, group: int) -> int:
        if rot_dim is None:
            rot_dim = group * num_freqs if num_freqs is not None else (dim if group == 3 else dim - dim % 2)
        if not 0 < rot_dim <= dim:
            raise ValueError(f"position.rot_dim must be in [1, head dim={dim}], got {rot_dim}")
        if group == 2 and rot_dim % 2:
            raise ValueError(f"position.rot_dim must be even for the standard rotary path, got {rot_dim}")
        return int(rot_dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before axes/proj were stored flat hold them as [n, 3] / [p, d]
        for name in ("axes", "proj"):
            mine, saved = getattr(self, name), state_dict.get(prefix + name)
            if mine is not None and saved is not None and saved.shape != mine.shape and saved.numel() == mine.numel():
                state_dict[prefix + name] = saved.reshape(mine.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def axis_vectors(self) -> torch.Tensor:
        """Learnable triplet axes ``[num_triplets, 3]`` (unnormalised)."""
        return self.axes.view(self.num_triplets, 3)

    @property
    def subspace(self) -> torch.Tensor:
        """Orthonormal rows ``A`` ``[proj_dim, dim]`` of the rotated subspace (projection path)."""
        return orthonormal_rows(self.proj.view(self.rot_dim, self.head_dim))

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Angle of every rotation group at every position, ``[T] -> [T, n]`` (fp32)."""
        ang = positions.to(self.freqs.dtype)[:, None] * self.freqs
        if self.rscale is not None:
            ang = ang * (self.rscale * self.rot)
        return ang

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Seed API: interleaved angle table ``[L, 2n]`` for positions ``t`` ``[L]``."""
        return repeat(self.angles(t), "... n -> ... (n r)", r=2)

    def _rotate_groups(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate the triplets/pairs at the start of ``x`` ``[..., T, w]``; features past them pass."""
        ang = self.angles(positions)
        k = self.num_triplets
        if k == 0:
            return rotate_pairs(x, ang)
        return apply_bands(x, rotation_bands(ang, self.axis_vectors, x.shape[-1]))  # triplets, pair, rest

    def rotate_qk(self, t: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate queries or keys ``t`` ``[B, H, T, dim]`` at absolute ``positions`` ``[T]`` (default ``arange(T)``)."""
        positions = check_positions(t, positions, self.head_dim)
        if self.use_projection:
            return project_and_rotate(t, self.subspace, lambda z: self._rotate_groups(z, positions)).to(t.dtype)
        return self._rotate_groups(t, positions).to(t.dtype)

    # seed API: thin delegates to the module-level implementations ------------------------
    def q_rotation(self, x: torch.Tensor, theta, u: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate 3-vectors ``x`` ``[..., 3]`` by ``theta`` about axis ``u`` (see
        :func:`famlab.position.quaternion.q_rotation`). ``v`` is in the signature for the seed's
        callers, which never passed one; a value is refused rather than ignored."""
        if v is not None:
            raise ValueError("RotaryEmbedding.q_rotation: v is not supported (rotation is by theta about u)")
        return quaternion.q_rotation(x, theta, u)

    def project_and_rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Projection path on ``x`` ``[..., T, dim]`` at positions ``0..T-1``: project onto the learned
        ``proj_dim``-subspace, rotate there, project back (``x + Aᵀ(R - I)Ax``); needs
        ``use_projection=True``."""
        if not self.use_projection:
            raise ValueError("RotaryEmbedding.project_and_rotate needs use_projection=True")
        positions = check_positions(x, None, self.head_dim)
        return project_and_rotate(x, self.subspace, lambda z: self._rotate_groups(z, positions)).to(x.dtype)

    @staticmethod
    def learned_rotations(rotations, t, start_index: int = 0, freq_ranges=None):
        """Rotate interleaved pairs of ``t`` by the angles ``rotations`` (see :func:`learned_rotations`)."""
        return learned_rotations(rotations, t, start_index=start_index, freq_ranges=freq_ranges)

    @torch.no_grad()
    def metrics(self) -> dict[str, torch.Tensor]:
        """Learned values (detached): frequency mean/std, rot_scale, first axis, axis/subspace drift."""
        f = self.freqs.detach().float()
        out = {"position/freq_mean": f.mean(), "position/freq_std": f.std(correction=0)}
        if self.rscale is not None:
            out["position/rot_scale"] = self.rscale.detach().clone()
        if self.axes is not None:
            u = self.axis_vectors.detach()
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            for name, value in zip("xyz", u[0].unbind(-1)):
                out[f"position/axis0_{name}"] = value.clone()
            cos = (u * self.axes_init).sum(-1).clamp(-1.0, 1.0)
            out["position/axis_drift"] = torch.acos(cos).mean()
        if self.proj is not None:
            overlap = self.subspace.detach() @ self.basis_init.transpose(0, 1)
            out["position/subspace_drift"] = 1 - overlap.pow(2).sum() / self.rot_dim
        return out

    def extra_repr(self) -> str:
        kind = "projection" if self.use_projection else "quaternion" if self.use_quaternion else "standard"
        return f"{kind}, head_dim={self.head_dim}, rot_dim={self.rot_dim}, freqs={self.freqs.numel()}"
