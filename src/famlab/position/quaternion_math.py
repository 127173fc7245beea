"""3-D rotations of head-feature triplets: unit-quaternion rotation, Rodrigues matrices, band maps.

* :func:`q_rotation`: rotate 3-vectors by ``θ`` about an axis ``u`` with the unit quaternion
  ``(cos(θ/2), sin(θ/2)·u)``: ``x + 2w(v×x) + 2v×(v×x)``, ``w = cos(θ/2)``, ``v = sin(θ/2)·u``.
* :func:`rotation_matrix`: the same rotation as a Rodrigues matrix (reference for tests).
* :func:`fibonacci_axes`: evenly spread initial axes on the sphere.
* :func:`rotation_bands`, :func:`apply_bands`, :func:`rotate_triplets`: every token's per-triplet
  rotation (plus one optional 2-D pair) as a block-diagonal map in band form, applied to a whole
  ``[..., T, w]`` tensor by five shifted multiply-adds with a hand-written backward (no per-triplet
  loops, no dense ``w × w`` matrices, no host syncs).

A rotation about a fixed axis ``u_k`` is a 2-D rotation in the plane orthogonal to ``u_k``, so with
angles ``θ_k · pos`` the triplet scheme's ``q·k`` equals RoPE on two of every three features after
a fixed orthogonal change of basis (``tests/position/test_quaternion.py`` checks this).
"""

from __future__ import annotations

import functools
import math

import torch


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


# Band layout of a per-token block-diagonal map with blocks of at most 3 features: entry
# ``bands[o + 2, t, p]`` multiplies feature ``p + o`` into output feature ``p`` (``o`` in -2..2).


def _triplet_table_map() -> torch.Tensor:
    """``[13, 3 * 5 * 3]`` map from ``(1, u, vec(uuᵀ))`` to one triplet's band tables.

    Tables ``m`` = 0, 1, 2 are the band forms of ``I - uuᵀ`` (times ``cos θ``), ``[u]×`` (times
    ``sin θ``) and ``uuᵀ`` (constant); entry ``[m, o + 2, i]`` is the matrix entry ``(i, i + o)``.
    """
    levi = {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1, (0, 2, 1): -1, (2, 1, 0): -1, (1, 0, 2): -1}
    w = torch.zeros(13, 3, 5, 3, dtype=torch.float64)
    for o in range(-2, 3):
        for i in range(3):
            j = i + o
            if not 0 <= j < 3:
                continue
            w[0, 0, o + 2, i] = float(i == j)
            w[4 + 3 * i + j, 0, o + 2, i] = -1.0
            w[4 + 3 * i + j, 2, o + 2, i] = 1.0
            for k in range(3):  # [u]x[i, j] = -eps_ijk u_k
                w[1 + k, 1, o + 2, i] = -levi.get((i, j, k), 0)
    return w.reshape(13, 45)


_TRIPLET_TABLES = _triplet_table_map()


@functools.cache
def _band_layout(n: int, width: int, pair: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature -> angle column ``[width]`` and the tables ``[3, 5, width - 3n]`` of the pair and passing features."""
    rest = width - 3 * n
    column = [p // 3 for p in range(3 * n)] + [n] * (2 * pair) + [0] * (rest - 2 * pair)
    tables = torch.zeros(3, 5, rest, dtype=torch.float64)
    if pair:  # y0 = cos x0 - sin x1, y1 = sin x0 + cos x1
        tables[0, 2, :2] = 1.0
        tables[1, 3, 0], tables[1, 1, 1] = -1.0, 1.0
    tables[2, 2, 2 * pair :] = 1.0
    return torch.tensor(column), tables


def rotation_bands(angles: torch.Tensor, axes: torch.Tensor, width: int) -> torch.Tensor:
    """Band coefficients ``[5, T, width]`` of per-token rotations of feature triplets (and one pair).

    Triplet ``k`` (features ``3k..3k+2``) turns by ``angles[t, k]`` about ``axes[k]`` (``[n, 3]``,
    normalised here): ``R = cos θ (I - uuᵀ) + sin θ [u]× + uuᵀ`` (Rodrigues). ``angles`` is
    ``[T, n]``, or ``[T, n + 1]`` when its last column turns the next two features as a 2-D pair
    (the map of ``rotate_pairs``); the remaining features up to ``width`` pass unchanged. Built as
    ``C + cos θ_p A + sin θ_p B`` from per-feature tables ``A, B, C`` ``[5, width]`` (one small
    matmul of the axes) and per-feature angles ``θ_p`` ``[T, width]``, in at least fp32.
    """
    n = axes.shape[0]
    pair = angles.shape[-1] == n + 1
    if angles.shape[-1] not in (n, n + 1) or width < 3 * n + 2 * pair:
        raise ValueError(f"rotation_bands: angles {tuple(angles.shape)} for {n} axes do not fit width {width}")
    dtype = torch.promote_types(torch.promote_types(axes.dtype, angles.dtype), torch.float32)  # fp32 angles
    u = axes.to(dtype)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    feats = torch.cat([u.new_ones(n, 1), u, (u[:, :, None] * u[:, None, :]).flatten(1)], 1)  # [n, 13]
    tables = (feats @ _TRIPLET_TABLES.to(u)).view(n, 3, 5, 3).permute(1, 2, 0, 3).reshape(3, 5, 3 * n)
    layout = _band_layout.__wrapped__ if torch.compiler.is_compiling() else _band_layout  # dynamo skips caches
    column, tail = layout(n, width, pair)
    if width > 3 * n:
        tables = torch.cat([tables, tail.to(u)], -1)
    per_feature = angles.to(dtype).index_select(-1, column.to(angles.device))  # [T, width]
    cos, sin = per_feature.cos(), per_feature.sin()
    return torch.addcmul(torch.addcmul(tables[2, :, None], cos, tables[0, :, None]), sin, tables[1, :, None])


class _BandedMap(torch.autograd.Function):
    """``y[..., t, p] = sum_o bands[o + 2, t, p] * x[..., t, p + o]`` with a hand-written backward.

    ``x`` ``[..., T, w]`` is flattened to ``[N, T*w]`` so each offset is one contiguous
    multiply-add over every row (out-of-token terms have zero coefficients); the backward is the
    transposed band for ``x`` and batch-summed shifted products for ``bands``, through one buffer.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
        length = x.shape[-2] * x.shape[-1]
        xf, cf = x.reshape(math.prod(x.shape[:-2]), length), bands.reshape(5, length)
        y = xf * cf[2]
        for o in (1, 2)[: max(length - 1, 0)]:
            y[:, :-o].addcmul_(xf[:, o:], cf[2 + o, :-o])
            y[:, o:].addcmul_(xf[:, :-o], cf[2 - o, o:])
        ctx.save_for_backward(xf, bands)
        ctx.x_shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xf, bands = ctx.saved_tensors
        length = xf.shape[-1]
        cf, gf = bands.reshape(5, length), grad.reshape(xf.shape)
        offsets = (1, 2)[: max(length - 1, 0)]
        grad_x = grad_bands = None
        buf = None
        if ctx.needs_input_grad[1]:  # first, so its scratch buffer can then hold grad_x
            gb = xf.new_zeros(5, length)
            buf = torch.mul(gf, xf)
            torch.sum(buf, 0, out=gb[2])
            # products into slices of one buffer; under torch.compile (no strided out=) plain products
            mul = (lambda a, b, out: a * b) if torch.compiler.is_compiling() else torch.mul
            for o in offsets:
                gb[2 + o, :-o] = mul(gf[:, :-o], xf[:, o:], out=buf[:, :-o]).sum(0)
                gb[2 - o, o:] = mul(gf[:, o:], xf[:, :-o], out=buf[:, o:]).sum(0)
            grad_bands = gb.view(bands.shape)
        if ctx.needs_input_grad[0]:
            gx = torch.mul(gf, cf[2], out=buf) if buf is not None else gf * cf[2]
            for o in offsets:
                gx[:, o:].addcmul_(gf[:, :-o], cf[2 + o, :-o])
                gx[:, :-o].addcmul_(gf[:, o:], cf[2 - o, o:])
            grad_x = gx.view(ctx.x_shape)
        return grad_x, grad_bands


def apply_bands(x: torch.Tensor, bands: torch.Tensor) -> torch.Tensor:
    """Apply band coefficients ``[5, T, w]`` (see :func:`rotation_bands`) to ``x`` ``[..., T, w]``.

    Computes in at least fp32 and returns ``x``'s dtype and shape (a contiguous tensor).
    """
    dtype = torch.promote_types(torch.promote_types(x.dtype, bands.dtype), torch.float32)
    return _BandedMap.apply(x.to(dtype), bands.to(dtype)).to(x.dtype)


def rotate_triplets(x: torch.Tensor, angles: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive feature triplets of ``x`` ``[..., T, w]`` by ``angles`` ``[T, n]`` about ``axes`` ``[n, 3]``.

    Triplet ``k`` of the token at row ``t`` turns by ``angles[t, k]`` about ``axes[k]``: the same
    map as :func:`q_rotation`, evaluated as the per-token Rodrigues matrices in band form
    (:func:`rotation_bands`, built once per call) applied by five shifted multiply-adds over the
    whole tensor. Features past ``3n`` pass unchanged. Computes in at least fp32.
    """
    return apply_bands(x, rotation_bands(angles, axes, x.shape[-1]))
