"""CompactRotations: pair subset, position-proportional angles, learned frequencies, seed helpers."""

from __future__ import annotations

import pytest
import torch

from famlab.position.compact import CompactRotations
from famlab.position.rotary import rotate_half

G = torch.Generator().manual_seed(0)


def test_default_rotates_a_quarter_of_the_pairs_and_passes_the_rest():
    scheme = CompactRotations(16)
    assert scheme.rot_pairs == 4
    x = torch.randn(2, 3, 6, 16, generator=G)
    out = scheme.rotate_qk(x, torch.arange(6) + 2)
    assert torch.equal(out[..., 8:], x[..., 8:])
    assert not torch.allclose(out[..., :8], x[..., :8])


def test_pair_angles_are_frequency_times_position_times_scale():
    scheme = CompactRotations(8, rot_pairs=2, rot_scale=0.5, rot_count=2).double()
    x = torch.randn(1, 1, 5, 8, generator=G, dtype=torch.float64)
    pos = torch.tensor([0, 3, 4, 10, 11])
    out = scheme.rotate_qk(x, pos)
    for k in range(2):
        angle = pos.double() * scheme.freqs[k]  # 0.5 * 2 = 1
        a, b = x[0, 0, :, 2 * k], x[0, 0, :, 2 * k + 1]
        torch.testing.assert_close(out[0, 0, :, 2 * k], a * angle.cos() - b * angle.sin())
        torch.testing.assert_close(out[0, 0, :, 2 * k + 1], b * angle.cos() + a * angle.sin())


def test_frequencies_are_parameters_only_when_learned():
    fixed, learned = CompactRotations(16), CompactRotations(16, learned_freq=True)
    assert list(fixed.parameters()) == [] and "freqs" in fixed.state_dict()
    assert [n for n, _ in learned.named_parameters()] == ["freqs"]
    assert learned.freqs.requires_grad
    torch.testing.assert_close(learned.freqs.detach(), 10000.0 ** (-torch.arange(4.0) / 4))


def test_interleaved_rotate_half_is_a_quarter_turn():
    x = torch.randn(4, 8, generator=G)
    torch.testing.assert_close((x * rotate_half(x)).sum(-1), torch.zeros(4), atol=1e-6, rtol=0)
    angles = torch.full((4, 4), torch.pi / 2)
    torch.testing.assert_close(CompactRotations.learned_rotations(angles, x), rotate_half(x), atol=1e-6, rtol=0)


def test_sinusoids_table():
    table = CompactRotations.sinusoids(7, 8)
    assert table.shape == (7, 8)
    torch.testing.assert_close(table[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))


@pytest.mark.parametrize("kwargs", [dict(rot_pairs=0), dict(rot_pairs=9), dict(rot_count=-1)])
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match="position.rot_"):
        CompactRotations(16, **kwargs)
