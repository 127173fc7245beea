"""Each public seed API called with the seed's own argument lists binds as the seed meant."""

from __future__ import annotations

import pytest
import torch

from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.attention.integrated import IntegratedAttention
from famlab.attention.myelinated import MyelinatedLayer
from famlab.position.quaternion import q_rotation
from famlab.position.rotary import RotaryEmbedding, learned_rotations


def run(mod, dims, T=16):
    x = torch.randn(2, T, dims)
    y = mod(x, torch.arange(T))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_adaptive_span_seed_positional_order():
    mod = AdaptiveSpan(64, 4, 64)  # dims, head, max_dist
    assert mod.max_dist == 64 and mod.sharpen is True and mod.temp_scale == 0.01
    mod = AdaptiveSpan(64, 4, 32, False, 0.05)  # + sharpen, temp_scale
    assert (mod.max_dist, mod.sharpen, mod.temp_scale) == (32, False, 0.05)
    run(mod, 64)


def test_integrated_seed_positional_order():
    mod = IntegratedAttention(64, 4, 512, 256, 384, 0.01)  # dims, head, max_dist, win_size, max_span, temp_scale
    assert (mod.max_dist, mod.win_size, mod.max_span, mod.temp_scale) == (512, 256, 384, 0.01)
    run(mod, 64)


def test_myelinated_seed_positional_order():
    mod = MyelinatedLayer(64, 4, 2, 0.2, 128)  # dims, head, layerA, sparsity_threshold, max_dist
    assert (mod.layerA, mod.sparsity_threshold, mod.sublayers[0].max_dist) == (2, 0.2, 128)
    run(mod, 64)


@pytest.mark.parametrize(
    "build,key",
    [
        (lambda: IntegratedAttention(64, 4, 512, 256, 0.01), "max_span"),  # the seed's temp_scale in max_span's slot
        (lambda: IntegratedAttention(64, 4, 0.5), "max_dist"),
        (lambda: IntegratedAttention(64, 4, 512, 0.9), "win_size"),
        (lambda: AdaptiveSpan(64, 4, 0.5), "max_dist"),
        (lambda: AdaptiveSpan(64, 4, 64, block=0.5), "block"),
        (lambda: MyelinatedLayer(64, 4, 0.5), "layerA"),
        (lambda: MyelinatedLayer(64, 4, 3, 0.1, 0.5), "max_dist"),
    ],
)
def test_sizes_that_truncate_to_zero_are_refused(build, key):
    with pytest.raises(ValueError, match=f"attention.{key}"):
        build()


@pytest.mark.parametrize("cls", [AdaptiveSpan, IntegratedAttention, MyelinatedLayer])
def test_a_position_module_in_the_third_slot_is_refused(cls):
    with pytest.raises(TypeError, match="position=... by keyword"):
        cls(64, 4, RotaryEmbedding(16))


def test_rotary_seed_constructor_and_methods():
    # the seed's own example: RotaryEmbedding(dim=model.dim, use_quaternion=True, proj_dim=3)
    rot = RotaryEmbedding(dim=12, use_quaternion=True, proj_dim=3)
    assert rot.use_quaternion and rot.num_triplets == 4
    # q_rotation(self, x, theta, u, v=None)
    x, u = torch.randn(5, 3), torch.tensor([0.0, 0.0, 2.0])
    y = rot.q_rotation(x, torch.tensor(0.7), u)
    torch.testing.assert_close(y, q_rotation(x, torch.tensor(0.7), u))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 2], x[:, 2])  # rotation about z keeps z
    with pytest.raises(ValueError, match="v is not supported"):
        rot.q_rotation(x, 0.7, u, torch.ones(3))
    # learned_rotations(self, rotations, t, start_index=0, freq_ranges=None)
    t, angles = torch.randn(7, 12), torch.randn(7, 2)
    freq_ranges = torch.tensor([1.0, 2.0, 3.0])
    out = rot.learned_rotations(angles, t, 0, freq_ranges)
    torch.testing.assert_close(out, learned_rotations(angles, t, start_index=0, freq_ranges=freq_ranges))
    torch.testing.assert_close(out.norm(dim=-1), t.norm(dim=-1))
    # project_and_rotate(self, x): on the projection path, the scheme's rotation of a [..., T, dim] tensor
    proj = RotaryEmbedding(12, use_quaternion=True, use_projection=True, proj_dim=3)
    z = torch.randn(2, 3, 9, 12)
    torch.testing.assert_close(proj.project_and_rotate(z), proj.rotate_qk(z))
    torch.testing.assert_close(proj.project_and_rotate(z).norm(dim=-1), z.norm(dim=-1))
    with pytest.raises(ValueError, match="use_projection=True"):
        rot.project_and_rotate(z)
