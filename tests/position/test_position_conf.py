"""Every conf/position/*.yaml builds the intended scheme through Hydra's instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.position.compact import CompactRotations
from famlab.position.none import NoPosition
from famlab.position.rotary import RotaryEmbedding

CONF = Path(__file__).resolve().parents[2] / "conf" / "position"
EXPECTED = {
    "rotary": (RotaryEmbedding, dict(use_quaternion=False, use_projection=False)),
    "quaternion": (RotaryEmbedding, dict(use_quaternion=True, use_projection=False)),
    "projection": (RotaryEmbedding, dict(use_quaternion=True, use_projection=True)),
    "compact": (CompactRotations, {}),
    "none": (NoPosition, {}),
}


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_option_builds_scheme_from_head_dim(option):
    factory = instantiate(OmegaConf.load(CONF / f"{option}.yaml"))
    scheme = factory(12)
    cls, flags = EXPECTED[option]
    assert type(scheme) is cls and scheme.head_dim == 12
    for key, value in flags.items():
        assert getattr(scheme, key) == value
    x = torch.randn(1, 2, 5, 12)
    assert scheme.rotate_qk(x, torch.arange(5)).shape == x.shape


def test_every_option_file_is_covered():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(EXPECTED)
