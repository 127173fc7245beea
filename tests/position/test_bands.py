"""The banded per-token map behind the quaternion path: same map as the reference rotations, exact gradients."""

from __future__ import annotations

import pytest
import torch

from famlab.position.quaternion import apply_bands, fibonacci_axes, q_rotation, rotation_bands
from famlab.position.rotary import RotaryEmbedding, rotate_pairs

G = torch.Generator().manual_seed(1)


def reference(x, angles, axes):
    """Triplets by q_rotation, then an optional pair by rotate_pairs, the rest unchanged."""
    n = axes.shape[0]
    parts = [q_rotation(x[..., 3 * k : 3 * k + 3], angles[:, k], axes[k]) for k in range(n)]
    rest = x[..., 3 * n :]
    if angles.shape[-1] == n + 1:
        rest = rotate_pairs(rest, angles[:, n:])
    return torch.cat(parts + [rest], -1)


def test_bands_equal_triplet_pair_and_passing_reference():
    for width, n, pair in ((6, 2, 0), (7, 2, 0), (8, 2, 1), (12, 3, 1), (3, 1, 0)):  # exact, passing, pair
        axes = torch.randn(n, 3, generator=G, dtype=torch.float64)
        angles = torch.randn(5, n + pair, generator=G, dtype=torch.float64) * 3
        x = torch.randn(2, 3, 5, width, generator=G, dtype=torch.float64)
        out = apply_bands(x, rotation_bands(angles, axes, width))
        torch.testing.assert_close(out, reference(x, angles, axes))


def test_band_map_gradcheck_with_pair_and_passing_feature():
    x = torch.randn(2, 4, 9, generator=G, dtype=torch.float64, requires_grad=True)  # 2 triplets + pair + 1
    angles = torch.randn(4, 3, generator=G, dtype=torch.float64, requires_grad=True)
    axes = torch.randn(2, 3, generator=G, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: apply_bands(a, rotation_bands(b, c, 9)), (x, angles, axes))
    g = torch.randn(2, 4, 9, generator=G, dtype=torch.float64)
    ours = torch.autograd.grad(apply_bands(x, rotation_bands(angles, axes, 9)), [x, angles, axes], g)
    theirs = torch.autograd.grad(reference(x, angles, axes), [x, angles, axes], g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_band_map_takes_strided_inputs_and_empty_batches():
    """q and k arrive as transposed views of the qkv projection ([B, T, H, hd] -> [B, H, T, hd])."""
    scheme = RotaryEmbedding(16, use_quaternion=True).double()
    base = torch.randn(2, 7, 3, 16, generator=G, dtype=torch.float64)
    strided = base.transpose(1, 2).requires_grad_()
    pos = torch.arange(7)
    out = scheme.rotate_qk(strided, pos)
    torch.testing.assert_close(out, scheme.rotate_qk(strided.detach().contiguous(), pos))
    grad = torch.randn(2, 7, 3, 16, generator=G, dtype=torch.float64).transpose(1, 2)  # strided gradient too
    (gx,) = torch.autograd.grad(out, strided, grad)
    angles, axes = scheme.angles(pos).detach(), scheme.axis_vectors.detach()
    (ref,) = torch.autograd.grad(reference(strided, angles, axes), strided, grad)
    torch.testing.assert_close(gx, ref)
    assert scheme.rotate_qk(torch.zeros(0, 3, 7, 16, dtype=torch.float64), pos).shape == (0, 3, 7, 16)


def test_band_map_keeps_norms_and_low_precision_dtype():
    axes = fibonacci_axes(21)
    angles = torch.arange(256.0)[:, None] * torch.rand(21, generator=G)
    x = torch.randn(2, 256, 64, generator=G)
    out = apply_bands(x, rotation_bands(angles, axes, 64))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(out[..., 63], x[..., 63])
    assert apply_bands(x.bfloat16(), rotation_bands(angles, axes, 64)).dtype == torch.bfloat16


@pytest.mark.slow  # ~15 s of dynamo tracing on a CPU
def test_quaternion_path_traces_under_torch_compile_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    scheme = RotaryEmbedding(17, use_quaternion=True)  # 5 triplets + a pair
    x = torch.randn(2, 3, 7, 17, generator=G, requires_grad=True)
    pos = torch.arange(7)
    compiled = torch.compile(lambda t: scheme.rotate_qk(t, pos), backend="aot_eager")
    out, ref = compiled(x), scheme.rotate_qk(x, pos)
    torch.testing.assert_close(out, ref)
    params = [x, scheme.axes, scheme.freqs, scheme.rscale]
    for a, b in zip(torch.autograd.grad(out.square().sum(), params), torch.autograd.grad(ref.square().sum(), params)):
        torch.testing.assert_close(a, b)
    assert not torch._dynamo.utils.counters["graph_break"]


def test_bands_of_low_precision_axes_are_computed_in_fp32():
    """Angles grow with position: bf16 axes (e.g. under a bf16 parameter policy) must not round them to bf16."""
    axes = fibonacci_axes(2)
    angles = torch.arange(300.0)[:, None] * torch.tensor([0.37, 1.1])
    bands = rotation_bands(angles, axes.bfloat16(), 6)
    assert bands.dtype == torch.float32
    torch.testing.assert_close(bands, rotation_bands(angles, axes.bfloat16().float(), 6))
