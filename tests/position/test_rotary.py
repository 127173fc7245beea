"""RotaryEmbedding standard path, rotate_half, apply_rotary and learned_rotations against references."""

from __future__ import annotations

import math

import pytest
import torch

from famlab.position.rotary import RotaryEmbedding, apply_rotary, learned_rotations, rotate_half


def rope_reference(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoFormer as complex multiplication: pair k of token at p becomes (x_2k + i x_2k+1) e^{i p f_k}."""
    n = freqs.numel()
    z = torch.view_as_complex(x[..., : 2 * n].reshape(*x.shape[:-1], n, 2).contiguous())
    z = z * torch.polar(torch.ones_like(freqs), positions[:, None].to(freqs.dtype) * freqs)
    return torch.cat([torch.view_as_real(z).flatten(-2), x[..., 2 * n :]], dim=-1)


def test_rotate_half_is_interleaved():
    x = torch.arange(6.0)
    assert rotate_half(x).tolist() == [-1.0, 0.0, -3.0, 2.0, -5.0, 4.0]
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x)


def test_default_is_full_width_rope_with_lang_frequencies():
    rope = RotaryEmbedding(16)
    assert rope.rot_dim == 16 and rope.freqs.numel() == 8 and rope.freqs.requires_grad
    expected = 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16)
    torch.testing.assert_close(rope.freqs.detach(), expected)


def test_standard_path_matches_complex_reference():
    rope = RotaryEmbedding(16, rot_dim=10).double()
    x = torch.randn(2, 3, 7, 16, dtype=torch.float64)
    pos = torch.arange(7) + 11
    torch.testing.assert_close(rope.rotate_qk(x, pos), rope_reference(x, pos, rope.freqs.detach()))
    assert torch.equal(rope.rotate_qk(x, pos)[..., 10:], x[..., 10:])


def test_legacy_linear_layout_and_theta_rescale():
    rope = RotaryEmbedding(8, theta=100.0, freqs_for="legacy_linear", theta_rescale_factor=2.0)
    theta_eff = 100.0 * 2.0 ** (8 / 6)
    torch.testing.assert_close(rope.freqs.detach(), torch.arange(4).float() * 2 * math.pi / theta_eff)


def test_num_freqs_sets_width_and_literal_seed_default_warns():
    assert RotaryEmbedding(16, num_freqs=3).rot_dim == 6
    with pytest.warns(UserWarning, match="zero frequency"):
        RotaryEmbedding(16, num_freqs=1, freqs_for="legacy_linear")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(freqs_for="pixel"), "freqs_for"),
        (dict(rot_dim=7), "even"),
        (dict(rot_dim=20), "rot_dim"),
        (dict(rot_dim=8, num_freqs=3), "num_freqs"),
        (dict(use_projection=True, proj_dim=1), "proj_dim"),
        (dict(use_projection=True, rot_dim=4), "proj_dim"),
        (dict(rot_count=0), "rot_count"),
    ],
)
def test_bad_config_raises_naming_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(16, **kwargs)


def test_learned_freq_false_freezes_and_standard_has_no_extra_parameters():
    rope = RotaryEmbedding(16, learned_freq=False)
    assert [n for n, p in rope.named_parameters() if p.requires_grad] == []
    assert {n for n, _ in RotaryEmbedding(16).named_parameters()} == {"freqs"}


def test_forward_is_interleaved_angle_table():
    rope = RotaryEmbedding(8)
    table = rope(torch.arange(5))
    assert table.shape == (5, 8)
    torch.testing.assert_close(table[:, 0::2], table[:, 1::2])
    torch.testing.assert_close(table[3, 0::2], 3 * rope.freqs.detach())


def test_apply_rotary_uses_last_positions_and_start_index():
    freqs = torch.randn(10, 4)
    t = torch.randn(2, 3, 6, 8)
    out = apply_rotary(freqs, t, start_index=2)
    assert torch.equal(out[..., :2], t[..., :2]) and torch.equal(out[..., 6:], t[..., 6:])
    mid = t[..., 2:6]
    expected = mid * freqs[-6:].cos() + rotate_half(mid) * freqs[-6:].sin()
    torch.testing.assert_close(out[..., 2:6], expected)
    with pytest.raises(ValueError, match="cover"):
        apply_rotary(torch.randn(3, 4), t)


def test_learned_rotations_values_and_freq_ranges():
    t = torch.randn(2, 5, 10)
    rotations = torch.randn(5, 3)
    out = learned_rotations(rotations, t, start_index=1)
    assert out.shape == t.shape and torch.equal(out[..., 0], t[..., 0]) and torch.equal(out[..., 7:], t[..., 7:])
    a, b = t[..., 1], t[..., 2]  # first pair turns by rotations[:, 0]
    c, s = rotations[:, 0].cos(), rotations[:, 0].sin()
    torch.testing.assert_close(out[..., 1], a * c - b * s)
    torch.testing.assert_close(out[..., 2], b * c + a * s)
    freq_ranges = torch.tensor([1.0, 2.0])
    ranged = learned_rotations(rotations[:, :2], t, freq_ranges=freq_ranges)
    expanded = (rotations[:, :2, None] * freq_ranges).flatten(-2)  # [5, 4] angles -> 8 features
    torch.testing.assert_close(ranged, learned_rotations(expanded, t))
    torch.testing.assert_close(ranged.norm(dim=-1), t.norm(dim=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_rotate_pairs_matches_real_form_values_and_gradients(dtype):
    base = torch.randn(2, 3, 7, 13, dtype=torch.float64)
    x = base[..., 1:].to(dtype).requires_grad_()  # odd storage offset: needs the contiguous fallback
    xs = x[..., :]  # non-leaf view used by the complex path
    angles = (torch.randn(7, 5, dtype=torch.float64) * 50).requires_grad_()
    from famlab.position.rotary import rotate_pairs

    fast = rotate_pairs(xs, angles.to(torch.promote_types(dtype, torch.float32)))
    ref = learned_rotations(angles, x.double())
    assert fast.dtype == dtype and torch.equal(fast[..., 10:], x[..., 10:])
    tol = dict(atol=3e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.double(), ref, **tol)
    g = torch.randn_like(ref)
    grads_fast = torch.autograd.grad(fast.double(), [x, angles], g)
    grads_ref = torch.autograd.grad(ref, [x, angles], g)
    for a, b in zip(grads_fast, grads_ref):
        rel = (a.double() - b.double()).norm() / b.double().norm()
        assert rel < (2e-2 if dtype == torch.bfloat16 else 1e-5)


def test_rotate_pairs_real_fallback_under_compile(monkeypatch):
    from famlab.position.rotary import rotate_pairs

    x, angles = torch.randn(2, 5, 8), torch.randn(5, 3)
    fast = rotate_pairs(x, angles)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    torch.testing.assert_close(rotate_pairs(x, angles), fast)
    with pytest.raises(ValueError, match="features"):
        rotate_pairs(x, torch.randn(5, 5))
