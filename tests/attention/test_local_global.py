"""attention=local_global: IntegratedAttention without the refiner, derived from integrated.yaml."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.attention.integrated import IntegratedAttention
from famlab.attention.local_global import LocalGlobalAttention
from famlab_testing import group_option

D, HEADS = 16, 2


def build(name: str):
    cfg = OmegaConf.merge({"model": {"context": 64}, "seed": 0}, {"attention": group_option("attention", name)})
    torch.manual_seed(0)
    return instantiate(cfg.attention)(dims=D, head=HEADS, position=None)


def test_inherits_every_integrated_setting_but_the_refiner():
    integrated, local_global = (
        OmegaConf.to_container(group_option("attention", name), resolve=False)
        for name in ("integrated", "local_global")
    )
    assert local_global["refiner"] is None and integrated["refiner"]["enabled"]
    differ = {k for k in integrated if k not in ("_target_", "refiner") and integrated[k] != local_global[k]}
    assert not differ and set(integrated) == set(local_global)


def test_same_parameters_and_output_as_integrated_without_refiner():
    ref = IntegratedAttention(D, HEADS, win_size=8, max_span=12, ramp=4, summary_block=4)
    mod = LocalGlobalAttention(D, HEADS, win_size=8, max_span=12, ramp=4, summary_block=4)
    assert type(build("local_global")) is LocalGlobalAttention and build("local_global").refiner is None
    mod.load_state_dict(ref.state_dict())  # strict: the same state dict keys
    x = torch.randn(2, 20, D)
    torch.testing.assert_close(mod(x, torch.arange(20)), ref(x, torch.arange(20)))


@pytest.mark.parametrize("refiner", [{"enabled": True}, {"states": 10}])
def test_a_refiner_is_refused(refiner):
    with pytest.raises(ValueError, match="attention.refiner"):
        LocalGlobalAttention(D, HEADS, refiner=refiner)
    assert LocalGlobalAttention(D, HEADS, refiner={"enabled": False, "states": 10}).refiner is None
