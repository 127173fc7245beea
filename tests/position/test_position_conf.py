"""Every conf/position/*.yaml builds the intended scheme through Hydra's instantiate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from famlab.position.compact import CompactRotations
from famlab.position.none import NoPosition
from famlab.position.projection import ProjectionRotary
from famlab.position.quaternion import QuaternionRotary
from famlab.position.rotary import Rotary
from famlab_testing import group_option

CONF = Path(__file__).resolve().parents[2] / "conf" / "position"
EXPECTED = {
    "rotary": (Rotary, dict(use_quaternion=False, use_projection=False)),
    "quaternion": (QuaternionRotary, dict(use_quaternion=True, use_projection=False)),
    "projection": (ProjectionRotary, dict(use_quaternion=True, use_projection=True)),
    "compact": (CompactRotations, {}),
    "none": (NoPosition, {}),
}


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_option_builds_scheme_from_head_dim(option):
    factory = instantiate(group_option("position", option))  # with its defaults list applied
    scheme = factory(12)
    cls, flags = EXPECTED[option]
    assert type(scheme) is cls and scheme.head_dim == 12
    for key, value in flags.items():
        assert getattr(scheme, key) == value
    x = torch.randn(1, 2, 5, 12)
    assert scheme.rotate_qk(x, torch.arange(5)).shape == x.shape


def test_every_option_file_is_covered():
    assert {p.stem for p in CONF.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_target_is_defined_in_the_module_named_after_the_option(option):
    target = group_option("position", option)._target_
    module, name = target.rsplit(".", 1)
    assert module == f"famlab.position.{option}"
    assert EXPECTED[option][0].__module__ == module and EXPECTED[option][0].__name__ == name
