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


OPTIONS = sorted(p.stem for p in CONF.glob("*.yaml"))  # a new option file is tested without an edit here


@pytest.mark.parametrize("option", OPTIONS)
def test_option_builds_scheme_from_head_dim(option):
    factory = instantiate(group_option("position", option))  # its defaults list applied
    scheme = factory(12)
    assert isinstance(scheme, torch.nn.Module) and scheme.head_dim == 12
    if option in EXPECTED:
        cls, flags = EXPECTED[option]
        assert type(scheme) is cls
        for key, value in flags.items():
            assert getattr(scheme, key) == value
    x = torch.randn(1, 2, 5, 12)
    y = scheme.rotate_qk(x, torch.arange(5))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_every_shipped_scheme_is_expected():
    assert set(EXPECTED) <= set(OPTIONS)


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_target_is_defined_in_the_module_named_after_the_option(option):
    target = group_option("position", option)._target_
    module, name = target.rsplit(".", 1)
    assert module == f"famlab.position.{option}"
    assert EXPECTED[option][0].__module__ == module and EXPECTED[option][0].__name__ == name
