"""Quaternion (3-D) rotations of head features: ``q_rotation``, triplet rotations, subspace projection.

Corrections to the seed (spec section 2.4), all deliberate:

* ``q_rotation`` is a true unit-quaternion rotation: the quaternion is ``(cos(θ/2), sin(θ/2)·u)``
  and the rotated vector ``x + 2w(v×x) + 2v×(v×x)`` uses the vector part ``v = sin(θ/2)·u``
  (the seed used the unit axis ``u`` itself, which scales norms by 1.2-2.2). The cross product is
  ``torch.linalg.cross(dim=-1)``; there is no ±10 clamp and the seed's unused ``v`` argument is gone.
* Angles grow with position (``θ_k · pos``), so a rotation about a fixed axis is a one-parameter
  group and ``q·k`` depends only on the offset; the seed applied one position-independent
  rotation to every token, which an orthogonal map cannot turn into position information.
* Triplets are rotated elementwise for all positions at once (no per-pair Python loops, no dense
  ``d×d`` matrices, no ``.item()``).
* ``project_and_rotate`` rotates a learned orthonormal ``proj_dim``-dimensional subspace and leaves
  its complement unchanged, ``y = x + Aᵀ(R - I)Ax`` (exactly orthogonal). The seed's lazily built
  ``0.9·up(rotations(down(x))) + 0.1·x`` shrank vectors about 10x and missed the optimizer.

Note for the claims: a rotation about a fixed axis ``u_k`` is a 2-D rotation in the plane
orthogonal to ``u_k`` (identity along ``u_k``), so the triplet scheme's ``q·k`` equals RoPE on two
of every three features after a fixed orthogonal change of basis that ``W_q``/``W_k`` can absorb
(tested in ``tests/position/test_quaternion.py``): "3-D rotary" is partial RoPE with one frequency
per triplet; the learned axes reparametrise it rather than add expressiveness.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange


def q_rotation(x: torch.Tensor, theta: torch.Tensor | float, u: torch.Tensor) -> torch.Tensor:
    """Rotate 3-vectors ``x`` ``[..., 3]`` by angle ``theta`` (radians) about axis ``u`` ``[..., 3]``.

    ``theta`` broadcasts against ``x.shape[:-1]`` and ``u`` against ``x``; ``u`` need not be unit
    length (it is normalised). Returns a tensor shaped like ``x`` with the same norms.
    """
    if x.shape[-1] != 3:
        raise ValueError(f"q_rotation: x must end in a dimension of size 3, got shape {tuple(x.shape)}")
    theta = torch.as_tensor(theta, device=x.device)
    dtype = torch.promote_types(torch.promote_types(theta.dtype, x.dtype), u.dtype)
    dtype = torch.promote_types(dtype, torch.float32)  # angles (pos * freq) need fp32 precision
    xf, u = x.to(dtype), u.to(dtype)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    half = theta.to(dtype).unsqueeze(-1) / 2
    w = torch.cos(half)
    v = torch.sin(half) * u
    ndim = max(v.ndim, xf.ndim)  # linalg.cross broadcasts only between equal ranks
    v, xf = v.reshape((1,) * (ndim - v.ndim) + v.shape), xf.reshape((1,) * (ndim - xf.ndim) + xf.shape)
    c1 = torch.linalg.cross(v, xf, dim=-1)
    c2 = torch.linalg.cross(v, c1, dim=-1)
    w = w.reshape((1,) * (ndim - w.ndim) + w.shape)
    return (xf + 2 * (w * c1 + c2)).to(x.dtype)


def rotation_matrix(axis: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """Reference ``[..., 3, 3]`` rotation matrix (Rodrigues) about ``axis`` ``[..., 3]`` by ``theta``.

    ``R = cos θ I + sin θ [u]× + (1 - cos θ) u uᵀ``; used by tests and metrics, not the hot path.
    """
    u = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    theta = torch.as_tensor(theta, dtype=u.dtype, device=u.device)[..., None, None]
    zero = torch.zeros_like(u[..., 0])
    ux, uy, uz = u.unbind(-1)
    cross = torch.stack(
        [torch.stack([zero, -uz, uy], -1), torch.stack([uz, zero, -ux], -1), torch.stack([-uy, ux, zero], -1)], -2
    )
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    outer = u[..., :, None] * u[..., None, :]
    return torch.cos(theta) * eye + torch.sin(theta) * cross + (1 - torch.cos(theta)) * outer


def fibonacci_axes(n: int) -> torch.Tensor:
    """``n`` deterministic, evenly spread unit axes ``[n, 3]`` (Fibonacci sphere) to initialise triplets."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / max(n, 1)
    r = torch.sqrt((1 - z * z).clamp_min(0))
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1).float()


def _rotate3(r, xs):
    """``[R x]_i = sum_j r[i][j] * x_j`` over component tensors (fused multiply-adds)."""
    return [torch.addcmul(torch.addcmul(r[i][0] * xs[0], r[i][1], xs[1]), r[i][2], xs[2]) for i in range(3)]


class _TripletRotation(torch.autograd.Function):
    """``y[..., t, k, :] = R[t, k] @ x[..., t, k, :]`` with a hand-written backward.

    Autograd of the component form spends 9 multiplies + 9 reductions on the gradient of ``R``;
    here it is one broadcast product reduced over the leading (batch, head) dims.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        rr = rearrange(r, "t n i j -> i j t n").contiguous()
        xc = rearrange(x, "... t (n c) -> c ... t n", c=3).contiguous()  # dense components: fast muls
        ctx.save_for_backward(xc, rr)
        return rearrange(torch.stack(_rotate3(rr, xc), dim=-1), "... t n c -> ... t (n c)")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xc, rr = ctx.saved_tensors
        gc = rearrange(grad, "... t (n c) -> c ... t n", c=3).contiguous()
        grad_x = grad_r = None
        if ctx.needs_input_grad[0]:  # R^T g
            grad_x = rearrange(torch.stack(_rotate3(rr.transpose(0, 1), gc), dim=-1), "... t n c -> ... t (n c)")
        if ctx.needs_input_grad[1]:  # sum over batch dims of g_i x_j
            batch_dims = tuple(range(2, xc.ndim - 1))
            grad_r = rearrange((gc[:, None] * xc[None]).sum(dim=batch_dims), "i j t n -> t n i j")
        return grad_x, grad_r


def rotate_triplets(x: torch.Tensor, angles: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive feature triplets of ``x`` ``[..., T, 3n]`` by ``angles`` ``[T, n]`` about ``axes`` ``[n, 3]``.

    Triplet ``k`` of the token at row ``t`` turns by ``angles[t, k]`` about ``axes[k]``: the same
    map as :func:`q_rotation`, evaluated as the ``[T, n, 3, 3]`` Rodrigues matrices (built once per
    call from the angles) applied to contiguous components with a fused backward, several times
    cheaper than two cross products on ``[B, H, T, n, 3]`` tensors. Computes in at least fp32.
    """
    r = rotation_matrix(axes, angles)
    dtype = torch.promote_types(x.dtype, r.dtype)
    return _TripletRotation.apply(x.to(dtype), r.to(dtype)).to(x.dtype)


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
