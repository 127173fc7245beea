"""NonFiniteGuard: a fixed number of ops per step, and one decision shared by every rank.

Two gloo processes stand in for two GPUs: only rank 1's loss is above ``max_loss``. Under
``policy=stop`` both ranks must raise at the same check (a rank that raised alone would leave the
other waiting in the next collective: here a short process-group timeout turns that hang into a
failure); under ``policy=skip`` both must skip the same steps.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from famlab.lit.nonfinite import NonFiniteError, NonFiniteGuard


class _Module(nn.Module):
    """What the guard reads from a LightningModule: parameters, ``device`` and ``_last_loss``."""

    def __init__(self, layers: int):
        super().__init__()
        self.net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(layers)])
        self.device = torch.device("cpu")
        self._last_loss = None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.zero_grad()
        loss = self.net(x).pow(2).mean()
        loss.backward()
        self._last_loss = loss.detach()
        return loss.detach()


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(layers: int) -> int:
    module, guard = _Module(layers), NonFiniteGuard()
    trainer = SimpleNamespace(global_step=0, default_root_dir=".")
    guard.setup(trainer, module)
    module.step(torch.ones(2, 8))
    guard.on_before_optimizer_step(trainer, module, None)  # builds the cached index tensor
    with _OpCounter() as counter:
        guard.on_before_optimizer_step(trainer, module, None)
    return counter.ops


def test_guard_dispatches_the_same_few_ops_for_any_number_of_parameters():
    small, large = _ops_per_step(2), _ops_per_step(40)  # 4 vs 80 parameter tensors
    assert small == large and large <= 32, (small, large)  # per-parameter checks: >= 2 ops per tensor


def test_guard_still_names_the_first_bad_parameter():
    module, guard = _Module(3), NonFiniteGuard()
    trainer = SimpleNamespace(global_step=4, default_root_dir=".")
    guard.setup(trainer, module)
    module.step(torch.ones(2, 8))
    module.net[0].weight.grad = None  # a parameter without a gradient this step
    module.net[2].bias.grad[1] = float("inf")
    guard.on_before_optimizer_step(trainer, module, None)
    with pytest.raises(NonFiniteError, match=r"at step 5; first parameter with a non-finite gradient: net.2.bias"):
        guard.check(trainer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, policy: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20))
    torch.manual_seed(0)
    module = _Module(2)
    guard = NonFiniteGuard(policy=policy, check_every=2, max_loss=1e6)
    trainer = SimpleNamespace(global_step=0, default_root_dir=out)
    guard.setup(trainer, module)
    result = {"rank": rank, "skipped_steps": [], "raised_at": None}
    try:
        for step in range(6):
            trainer.global_step = step
            module.step(torch.ones(2, 8))
            if rank == 1 and step == 2:  # only this rank's loss blows up
                module._last_loss = torch.tensor(1e9)
            guard.on_before_optimizer_step(trainer, module, None)
            if all(p.grad is None for p in module.parameters()):
                result["skipped_steps"].append(step)
            else:
                for p in module.parameters():  # the gradient all-reduce a DDP step would do
                    dist.all_reduce(p.grad)
            trainer.global_step = step + 1
            if trainer.global_step % guard.check_every == 0:
                guard.check(trainer)
    except NonFiniteError as e:
        result["raised_at"] = trainer.global_step
        result["error"] = str(e)
    result["skipped"] = int(guard.skipped)
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def _run_two(tmp_path, policy: str) -> list[dict]:
    ctx = mp.start_processes(
        _rank, args=(2, _free_port(), policy, str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    import time

    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"policy={policy}: the ranks hung (no joint decision)")
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_stop_policy_stops_every_rank_at_the_same_check(tmp_path):
    r0, r1 = _run_two(tmp_path, "stop")
    assert r0["raised_at"] == r1["raised_at"] == 4, (r0, r1)  # bad at step index 2, checked after step 4
    assert "at step 3" in r0["error"] and "max_loss" in r0["error"]


@pytest.mark.slow
def test_skip_policy_skips_the_same_steps_on_every_rank(tmp_path):
    r0, r1 = _run_two(tmp_path, "skip")
    assert r0["raised_at"] is None and r1["raised_at"] is None
    assert r0["skipped_steps"] == r1["skipped_steps"] == [2]
    assert r0["skipped"] == r1["skipped"] == 1
