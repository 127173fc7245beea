"""``position=quaternion``: 3-D rotary, feature triplets turning about learnable axes.

:class:`QuaternionRotary` splits the first ``rot_dim`` features of each query and key
``[B, H, T, dim]`` into triplets; triplet ``k`` of the token at position ``pos`` turns by
``θ_k = f_k · pos · rot_scale · rot_count`` about its own learnable axis ``u_k`` (a unit-quaternion
rotation, :func:`~famlab.position.quaternion_math.q_rotation`). A leftover pair
(``rot_dim % 3 == 2``) turns as a 2-D rotation by the next angle; a leftover single feature passes.
Angles are proportional to position and each axis is fixed, so ``q·k`` depends only on the
offset. ``rot_scale`` is learnable (its sign is the direction of rotation); ``rot_count`` is a
constant multiplier. Axes start evenly spread on the sphere (:func:`fibonacci_axes`).

The triplet math lives in :mod:`famlab.position.quaternion_math` and the subspace helpers in
:mod:`famlab.position.rotation_math`; both are re-exported here.
"""

from __future__ import annotations

import torch
from torch import nn

from famlab.position.quaternion_math import (
    apply_bands,
    fibonacci_axes,
    q_rotation,
    rotate_triplets,
    rotation_bands,
    rotation_matrix,
)
from famlab.position.rotary import Rotary, check_rot_dim
from famlab.position.rotation_math import orthonormal_rows, project_and_rotate

__all__ = [
    "QuaternionRotary",
    "apply_bands",
    "fibonacci_axes",
    "orthonormal_rows",
    "project_and_rotate",
    "q_rotation",
    "rotate_triplets",
    "rotation_bands",
    "rotation_matrix",
]


class QuaternionRotary(Rotary):
    """Position scheme ``rotate_qk(t [B, H, T, dim], positions [T]) -> [B, H, T, dim]`` (3-D rotary).

    ``rot_dim`` defaults to ``dim`` (``3 · num_freqs`` when ``num_freqs`` is given). Parameters:
    ``freqs`` ``[n]``, ``rscale`` ``[]`` and ``axes`` ``[3 · triplets]`` (the axes stored flat, so
    the optimizers' ``ndim >= 2`` weight-decay rule skips them: their length is normalised away);
    buffers ``rot`` ``[]`` (``rot_count``) and ``axes_init`` ``[triplets, 3]`` (for the drift metric).
    """

    use_quaternion = True
    flat_parameters = ("axes",)  # stored 1-D; checkpoints may hold them in matrix shape

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
    ):
        if rot_count <= 0:
            raise ValueError(f"position.rot_count must be > 0, got {rot_count}")
        super().__init__(
            dim,
            theta=theta,
            num_freqs=num_freqs,
            learned_freq=learned_freq,
            freqs_for=freqs_for,
            theta_rescale_factor=theta_rescale_factor,
            rot_dim=rot_dim,
        )
        self.rscale = nn.Parameter(torch.tensor(float(rot_scale)))
        self.register_buffer("rot", torch.tensor(float(rot_count)))
        self.register_parameter("axes", None)
        if self.num_triplets:
            self.axes = nn.Parameter(fibonacci_axes(self.num_triplets).reshape(-1))
            self.register_buffer("axes_init", fibonacci_axes(self.num_triplets))

    def _layout(self, dim: int, rot_dim: int | None, num_freqs: int | None) -> tuple[int, int, int]:
        """``(rotated width, triplets, pairs)``: ``w // 3`` triplets and one pair when ``w % 3 == 2``."""
        if rot_dim is None:
            rot_dim = 3 * num_freqs if num_freqs is not None else dim
        check_rot_dim(rot_dim, dim)
        return triplet_layout(int(rot_dim))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a flat parameter saved in its matrix shape ([n, 3] axes, [p, d] subspace) loads as a view
        for name in self.flat_parameters:
            mine, saved = getattr(self, name), state_dict.get(prefix + name)
            if mine is not None and saved is not None and saved.shape != mine.shape and saved.numel() == mine.numel():
                state_dict[prefix + name] = saved.reshape(mine.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def axis_vectors(self) -> torch.Tensor:
        """Learnable triplet axes ``[num_triplets, 3]`` (unnormalised)."""
        return self.axes.view(self.num_triplets, 3)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """``[T] -> [T, n]``: ``pos · f_k · rot_scale · rot_count`` (fp32)."""
        return super().angles(positions) * (self.rscale * self.rot)

    def _rotate_groups(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Triplets (then the pair) at the start of ``x`` ``[..., T, w]`` as one band map; the rest pass."""
        if self.num_triplets == 0:
            return super()._rotate_groups(x, positions)
        return apply_bands(x, rotation_bands(self.angles(positions), self.axis_vectors, x.shape[-1]))

    @torch.no_grad()
    def metrics(self) -> dict[str, torch.Tensor]:
        """Adds ``position/rot_scale``, the first axis ``position/axis0_{x,y,z}`` and the mean angle
        ``position/axis_drift`` (radians) between the axes and their initial values."""
        out = super().metrics()
        out["position/rot_scale"] = self.rscale.detach().clone()
        if self.axes is not None:
            u = self.axis_vectors.detach()
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            for name, value in zip("xyz", u[0].unbind(-1)):
                out[f"position/axis0_{name}"] = value.clone()
            cos = (u * self.axes_init).sum(-1).clamp(-1.0, 1.0)
            out["position/axis_drift"] = torch.acos(cos).mean()
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, triplets={self.num_triplets}, pairs={self.num_pairs}"


def triplet_layout(width: int) -> tuple[int, int, int]:
    """``(width, width // 3, 1 if width % 3 == 2 else 0)``: triplets, then a pair or a passing feature."""
    return width, width // 3, int(width % 3 == 2)
