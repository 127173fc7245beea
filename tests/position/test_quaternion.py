"""q_rotation against quaternion algebra and rotation matrices; triplet and projection paths."""

from __future__ import annotations

import math

import torch

from famlab.position.quaternion import (
    fibonacci_axes,
    orthonormal_rows,
    project_and_rotate,
    q_rotation,
    rotate_triplets,
    rotation_matrix,
)
from famlab.position.rotary import RotaryEmbedding

G = torch.Generator().manual_seed(0)


def hamilton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Quaternion product of ``[..., 4]`` tensors (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def test_q_rotation_equals_q_x_qconj():
    x = torch.randn(50, 3, generator=G, dtype=torch.float64)
    u = torch.randn(50, 3, generator=G, dtype=torch.float64)
    theta = torch.rand(50, generator=G, dtype=torch.float64) * 4 * math.pi - 2 * math.pi
    unit = u / u.norm(dim=-1, keepdim=True)
    q = torch.cat([torch.cos(theta / 2)[:, None], torch.sin(theta / 2)[:, None] * unit], -1)
    q_conj = q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
    pure = torch.cat([torch.zeros(50, 1, dtype=torch.float64), x], -1)
    expected = hamilton(hamilton(q, pure), q_conj)[:, 1:]
    torch.testing.assert_close(q_rotation(x, theta, u), expected)
    torch.testing.assert_close((rotation_matrix(u, theta) @ x[..., None])[..., 0], expected)


def test_q_rotation_known_values_and_group_law():
    z = torch.tensor([0.0, 0.0, 2.0])  # unnormalised axis
    torch.testing.assert_close(q_rotation(torch.tensor([1.0, 0.0, 0.0]), math.pi / 2, z), torch.tensor([0.0, 1.0, 0.0]))
    x, u = torch.randn(8, 3, generator=G, dtype=torch.float64), torch.randn(3, generator=G, dtype=torch.float64)
    a, b = torch.tensor(0.7, dtype=torch.float64), torch.tensor(-2.1, dtype=torch.float64)
    torch.testing.assert_close(q_rotation(q_rotation(x, a, u), b, u), q_rotation(x, a + b, u))
    torch.testing.assert_close(q_rotation(x, a, u).norm(dim=-1), x.norm(dim=-1))


def test_rotation_matrix_is_special_orthogonal():
    r = rotation_matrix(
        torch.randn(5, 3, generator=G, dtype=torch.float64), torch.randn(5, generator=G, dtype=torch.float64)
    )
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(5, dtype=torch.float64))


def test_rotate_triplets_turns_each_triplet_about_its_axis():
    x = torch.randn(2, 4, 6, generator=G, dtype=torch.float64)  # [B, T, 2 triplets]
    angles = torch.randn(4, 2, generator=G, dtype=torch.float64)
    axes = fibonacci_axes(2).double()
    out = rotate_triplets(x, angles, axes)
    for k in range(2):  # q_rotation is checked against q x q* above
        ref = q_rotation(x[..., 3 * k : 3 * k + 3], angles[:, k], axes[k])
        torch.testing.assert_close(out[..., 3 * k : 3 * k + 3], ref)
    half = rotate_triplets(x.to(torch.bfloat16), angles, axes)
    assert half.dtype == torch.bfloat16


def test_fibonacci_axes_are_unit_and_distinct():
    axes = fibonacci_axes(21)
    torch.testing.assert_close(axes.norm(dim=-1), torch.ones(21))
    cos = axes @ axes.T - torch.eye(21)
    assert cos.max() < 0.99


def test_quaternion_path_layout_and_leftovers():
    single = RotaryEmbedding(13, use_quaternion=True)  # 4 triplets + 1 passing feature
    assert (single.num_triplets, single.num_pairs, single.freqs.numel()) == (4, 0, 4)
    x = torch.randn(1, 1, 5, 13, generator=G)
    assert torch.equal(single.rotate_qk(x, torch.arange(5))[..., 12], x[..., 12])
    pair = RotaryEmbedding(14, use_quaternion=True)  # 4 triplets + 1 rotating pair
    assert (pair.num_triplets, pair.num_pairs) == (4, 1)
    y = torch.randn(1, 1, 5, 14, generator=G)
    out = pair.rotate_qk(y, torch.arange(5))
    assert not torch.allclose(out[..., 12:], y[..., 12:])
    torch.testing.assert_close(out[..., 12:].norm(dim=-1), y[..., 12:].norm(dim=-1))


def test_quaternion_angle_is_freq_times_position_times_scale():
    q = RotaryEmbedding(6, use_quaternion=True, rot_scale=0.5, rot_count=3).double()
    x = torch.randn(1, 1, 4, 6, generator=G, dtype=torch.float64)
    pos = torch.tensor([0, 1, 2, 9])
    out = q.rotate_qk(x, pos)
    for k in range(2):
        angle = pos.double() * q.freqs[k].detach() * 1.5
        ref = q_rotation(x[0, 0, :, 3 * k : 3 * k + 3], angle, q.axis_vectors[k].detach())
        torch.testing.assert_close(out[0, 0, :, 3 * k : 3 * k + 3], ref)


def test_orthonormal_rows():
    w = torch.randn(3, 10, generator=G, dtype=torch.float64)
    a = orthonormal_rows(w)
    torch.testing.assert_close(a @ a.T, torch.eye(3, dtype=torch.float64))
    # same row space, and already-orthonormal rows are returned unchanged
    torch.testing.assert_close(
        w @ (torch.eye(10, dtype=torch.float64) - a.T @ a), torch.zeros(3, 10, dtype=torch.float64)
    )
    torch.testing.assert_close(orthonormal_rows(a), a)


def position_matrix(scheme, hd: int, pos: int) -> torch.Tensor:
    """The linear map the scheme applies at position ``pos`` (rows = images of basis vectors)."""
    eye = torch.eye(hd, dtype=torch.float64)[None, None]
    return scheme.rotate_qk(eye, torch.full((hd,), pos))[0, 0]


def test_projection_map_is_orthogonal_and_moves_only_the_subspace():
    scheme = RotaryEmbedding(12, use_quaternion=True, use_projection=True).double()
    basis = scheme.subspace.detach()
    for pos in (1, 7, 300):
        m = position_matrix(scheme, 12, pos)
        torch.testing.assert_close(m @ m.T, torch.eye(12, dtype=torch.float64))
        assert torch.linalg.matrix_rank(m - torch.eye(12, dtype=torch.float64)) <= 3
    complement = torch.eye(12, dtype=torch.float64) - basis.T @ basis
    x = torch.randn(1, 1, 5, 12, generator=G, dtype=torch.float64) @ complement
    torch.testing.assert_close(scheme.rotate_qk(x, torch.arange(5) + 4), x)


def test_project_and_rotate_with_identity_rotation_is_identity():
    x = torch.randn(4, 8, generator=G)
    basis = orthonormal_rows(torch.randn(3, 8, generator=G))
    torch.testing.assert_close(project_and_rotate(x, basis, lambda z: z), x)


def test_metrics_track_learned_values():
    scheme = RotaryEmbedding(12, use_quaternion=True, use_projection=True)
    assert scheme.metrics()["position/axis_drift"] < 1e-3
    assert abs(scheme.metrics()["position/subspace_drift"]) < 1e-5
    with torch.no_grad():
        scheme.axis_vectors.add_(torch.tensor([[0.5, -0.5, 0.5]]))
        scheme.proj.add_(0.2 * torch.randn(scheme.proj.shape, generator=G))
        scheme.rscale.fill_(-0.5)
    metrics = scheme.metrics()
    assert metrics["position/axis_drift"] > 0.1 and metrics["position/subspace_drift"] > 1e-3
    assert metrics["position/rot_scale"] == -0.5


def test_scale_invariant_parameters_are_one_dimensional():
    """Axes and the subspace parameter are flat so ndim-based optimizer groups skip weight decay."""
    scheme = RotaryEmbedding(12, use_quaternion=True, use_projection=True)
    assert all(p.ndim <= 1 for p in scheme.parameters())
    assert scheme.axis_vectors.shape == (1, 3) and scheme.subspace.shape == (3, 12)


def test_loads_checkpoints_with_unflattened_axes_and_subspace():
    scheme = RotaryEmbedding(12, use_quaternion=True, use_projection=True)
    old = dict(scheme.state_dict())
    old["axes"], old["proj"] = old["axes"].view(1, 3), old["proj"].view(3, 12)
    clone = RotaryEmbedding(12, use_quaternion=True, use_projection=True)
    with torch.no_grad():
        clone.proj.zero_().add_(1.0)
    clone.load_state_dict(old)
    x = torch.randn(1, 1, 4, 12, generator=G)
    torch.testing.assert_close(clone.rotate_qk(x, torch.arange(4)), scheme.rotate_qk(x, torch.arange(4)))


def test_triplet_rotation_backward_matches_gradcheck():
    x = torch.randn(2, 3, 4, 6, generator=G, dtype=torch.float64, requires_grad=True)
    angles = torch.randn(4, 2, generator=G, dtype=torch.float64, requires_grad=True)
    axes = torch.randn(2, 3, generator=G, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotate_triplets, (x, angles, axes))
    # and against autograd through the reference q_rotation
    g = torch.randn(2, 3, 4, 6, generator=G, dtype=torch.float64)
    ref = torch.cat([q_rotation(x[..., 3 * k : 3 * k + 3], angles[:, k], axes[k]) for k in range(2)], -1)
    for a, b in zip(
        torch.autograd.grad(rotate_triplets(x, angles, axes), [x, angles, axes], g),
        torch.autograd.grad(ref, [x, angles, axes], g),
    ):
        torch.testing.assert_close(a, b)


def test_quaternion_scores_equal_partial_rope_in_the_axis_basis():
    """Finding: a rotation about a fixed axis u_k is a 2-D rotation in the plane orthogonal to u_k, so
    the quaternion scheme's q.k equals RoPE on 2 of every 3 features after a fixed orthogonal change of
    basis (which W_q, W_k can absorb); learned axes reparametrise, they do not add expressiveness."""
    from famlab.position.rotary import learned_rotations

    scheme = RotaryEmbedding(6, use_quaternion=True, rot_scale=0.7).double()
    u = scheme.axis_vectors.detach() / scheme.axis_vectors.detach().norm(dim=-1, keepdim=True)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand_as(u)
    e1 = torch.linalg.cross(u, helper, dim=-1)
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(u, e1, dim=-1)
    basis = torch.stack([e1, e2, u], 1)  # [n, 3 (row: e1, e2, u), 3]
    pos = torch.arange(9) * 3 + 1

    def in_basis(x):  # [..., 6] -> planes (a0, b0, a1, b1) then axis coordinates (c0, c1)
        coords = torch.einsum("nij,...nj->...ni", basis, x.unflatten(-1, (2, 3)))
        return torch.cat([coords[..., :2].flatten(-2), coords[..., 2]], -1)

    q, k = (torch.randn(1, 2, 9, 6, generator=G, dtype=torch.float64) for _ in range(2))
    quat = scheme.rotate_qk(q, pos) @ scheme.rotate_qk(k, pos).transpose(-1, -2)
    angles = scheme.angles(pos).detach()
    rope = learned_rotations(angles, in_basis(q)) @ learned_rotations(angles, in_basis(k)).transpose(-1, -2)
    torch.testing.assert_close(quat, rope)
