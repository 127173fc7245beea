"""Every rotary option reproduces fixed-seed reference values exactly (``reference.json``).

Each case is built from its option file (``conf/position/<option>.yaml`` with its defaults list and
overrides) and through ``RotaryEmbedding(..., use_quaternion=..., use_projection=...)``; both must
give the recorded ``state_dict`` (same keys in the same order, same shapes and values), trainable
parameters, ``rotate_qk`` output, angle table, gradients and metrics. Checkpoints of every option
therefore load into the option's class unchanged. ``reference_cases.py`` writes the file.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from reference_cases import CASES, REFERENCE, build, record

from famlab.position.rotary import RotaryEmbedding
from famlab_testing import group_option

EXPECTED = json.loads(REFERENCE.read_text())


def from_option(option: str, overrides: dict):
    node = OmegaConf.merge(group_option("position", option), overrides)
    return instantiate(node)


def assert_matches(got: dict, want: dict) -> None:
    assert list(got["state_dict"]) == list(want["state_dict"])
    for key, entry in want["state_dict"].items():
        assert got["state_dict"][key]["shape"] == entry["shape"], key
    assert got["trainable"] == want["trainable"]
    assert list(got["grads"]) == list(want["grads"]) and list(got["metrics"]) == list(want["metrics"])

    def same(a, b, what):  # float64 values; a last-bit allowance for another machine's libm/LAPACK
        torch.testing.assert_close(
            torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), rtol=1e-12, atol=1e-12, msg=what
        )

    for key, entry in want["state_dict"].items():
        same(got["state_dict"][key]["values"], entry["values"], key)
    same(got["rotate_qk"], want["rotate_qk"], "rotate_qk")
    same(got["forward"], want["forward"], "forward")
    for key, values in want["grads"].items():
        same(got["grads"][key], values, f"grad {key}")
    same(list(got["metrics"].values()), list(want["metrics"].values()), "metrics")


def test_reference_covers_every_case():
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_option_file_reproduces_reference(name):
    option, hd, overrides, _ = CASES[name]
    assert_matches(record(build(from_option(option, overrides), hd), hd), EXPECTED[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_seed_constructor_reproduces_reference(name):
    _, hd, _, kwargs = CASES[name]
    assert_matches(record(build(functools.partial(RotaryEmbedding, **kwargs), hd), hd), EXPECTED[name])


@pytest.mark.parametrize(
    "flags, cls_name",
    [
        ({}, "Rotary"),
        ({"use_quaternion": True}, "QuaternionRotary"),
        ({"use_quaternion": True, "use_projection": True}, "ProjectionRotary"),
    ],
)
def test_configs_naming_the_flag_constructor_build_the_option_class(flags, cls_name):
    """A saved run config with ``_target_: famlab.position.rotary.RotaryEmbedding`` and flags still builds."""
    node = {"_target_": "famlab.position.rotary.RotaryEmbedding", "_partial_": True, "theta": 10000.0, **flags}
    scheme = build(instantiate(node), 12)
    assert type(scheme).__name__ == cls_name
    name = {"Rotary": "rotary", "QuaternionRotary": "quaternion", "ProjectionRotary": "projection"}[cls_name]
    assert_matches(record(scheme, 12), EXPECTED[name])
