"""Stateful attention parts restore under any rank/device index; myelinated under a process group."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.attention.integrated import IntegratedAttention
from famlab.attention.myelinated import MyelinatedLayer
from famlab_testing import HostSyncCatcher

D, H, T = 16, 2, 12
REFINER = {"enabled": True, "update_every": 2, "epsilon": 0.5, "seed": 3}


def builders():
    return {
        "refiner": lambda: IntegratedAttention(D, H, win_size=4, max_span=6, ramp=2, refiner=REFINER),
        "myelinated": lambda: MyelinatedLayer(D, H, 3, max_dist=T, seed=5),
        "adaptive_span": lambda: AdaptiveSpan(D, H, T, ramp=2, block=4, extent_round=2),
    }


def train(mod, steps, seed=0):
    """A few SGD steps on a fixed batch; returns the outputs of each step."""
    opt = torch.optim.SGD(mod.parameters(), lr=0.5)
    x = torch.randn(3, T, D, generator=torch.Generator().manual_seed(seed))
    outs = []
    for _ in range(steps):
        y = mod(x, torch.arange(T))
        loss = y.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mod.post_step(loss.detach()) if hasattr(mod, "post_step") else None
        outs.append(y.detach())
    return outs


def device_strings(obj) -> list[str]:
    """Every string in a (nested) state that names a device: none may key the state."""
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in device_strings(k) + device_strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in device_strings(v)]
    return [obj] if isinstance(obj, str) and (obj.startswith("cuda") or obj.startswith("cpu")) else []


@pytest.mark.parametrize("name", ["refiner", "myelinated", "adaptive_span"])
def test_state_saved_under_one_device_index_continues_identically_under_another(name):
    torch.manual_seed(0)
    mod = builders()[name]().train()
    train(mod, 5)
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    assert device_strings(mod.state_dict()) == []  # nothing keyed by a device string such as cuda:0
    # the rank on another device index maps every storage to its own device (here: the host)
    buf.seek(0)
    state = torch.load(buf, map_location=lambda storage, _location: storage, weights_only=False)
    torch.manual_seed(1)  # a different fresh init: everything must come from the checkpoint
    other = builders()[name]().train()
    other.load_state_dict(state)
    reference = copy.deepcopy(mod)
    for a, b in zip(train(reference, 6, seed=2), train(other, 6, seed=2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if name == "adaptive_span":
        assert other.extent == reference.extent
    if name == "refiner":
        torch.testing.assert_close(other.refiner.q_table, reference.refiner.q_table)
        assert other.refiner._host_step == reference.refiner._host_step == 11
    if name == "myelinated":
        assert other.get_extra_state() == reference.get_extra_state() == {"draws": 11, "seed": 5}


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_myelinated_under_a_one_process_group_never_skips_in_training(one_process_group):
    assert dist.get_world_size() == 1
    mod = MyelinatedLayer(D, H, 3, max_dist=T, skip_compute="batch").train()
    with torch.no_grad():  # sub-layer 1 unimportant for every token: a real skip would leave it without grad
        mod.node_predictors[1][1].weight.zero_()
        mod.node_predictors[1][1].bias.fill_(-20.0)
    x = torch.randn(2, T, D)
    with HostSyncCatcher() as catcher:
        y = mod(x, torch.arange(T))
        F.mse_loss(y, torch.zeros_like(y)).backward()
    assert catcher.syncs == 0
    assert mod.last_active[1].sum() == 0
    missing = [n for n, p in mod.named_parameters() if p.grad is None]
    assert missing == []  # DDP's unused-parameter check would fail on any of them
    mod.eval()  # eval may still skip (no gradients, no collective)
    assert mod._may_skip()


def test_myelinated_without_a_process_group_may_skip_in_batch_mode():
    assert not dist.is_initialized()
    mod = MyelinatedLayer(D, H, 3, max_dist=T, skip_compute="batch").train()
    assert mod._may_skip()
    assert not MyelinatedLayer(D, H, 3, max_dist=T).train()._may_skip()  # default "eval": masked in training


def test_myelinated_forward_builds_no_index_tensor_and_reads_nothing():
    """The jump logit uses slices, not ``log_pi[..., [0, 2]]`` (a host list copied to the device each call)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    mod = MyelinatedLayer(D, H, 3, max_dist=T).train()
    x = torch.randn(2, T, D)
    with Ops() as ops, HostSyncCatcher() as catcher:
        mod(x, torch.arange(T)).sum().backward()
    assert catcher.syncs == 0
    assert not [n for n in ops.names if n.startswith(("aten.index.Tensor", "aten.lift_fresh"))]
