"""Two-process training on the CPU (gloo) equals one process with the same global batch, and
stateful parts (FAM statistics, Q-tables, skip decisions) stay identical on every rank."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from famlab import api
from famlab.build import build_optimization
from famlab.data.windows import sample_windows, step_generator
from famlab_testing import TINY, options

STEPS, GLOBAL_BATCH, SEQ = 4, 4, 24
VARIANTS = [("attention", a) for a in options("attention")] + [("optimizer", o) for o in options("optimizer")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(override: str, rank: int, world: int) -> tuple[list[float], dict]:
    """STEPS steps on this rank's slice of each global batch; returns losses and final weights."""
    torch.manual_seed(0)
    cfg = api.compose([*TINY, override, "optimizer.lr=0.003"])
    model = api.build_model(cfg, vocab_size=40)
    factory, _ = build_optimization(cfg, model)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = factory(model)
    tokens = torch.randint(0, 40, (4000,), generator=torch.Generator().manual_seed(1))
    losses = []
    for step in range(STEPS):
        batch = sample_windows(tokens, SEQ, GLOBAL_BATCH, step_generator(0, step))
        x, y = batch["input"][rank::world], batch["target"][rank::world]
        loss = F.cross_entropy(ddp(x).flatten(0, 1), y.flatten())
        aux = model.aux_loss()
        opt.zero_grad()
        (loss if aux is None else loss + aux).backward()
        opt.step()
        model.post_step(loss=loss.detach())
        mean = loss.detach().clone()
        if world > 1:
            dist.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
    state = {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}
    return losses, state


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for group, option in VARIANTS:
        results[f"{group}={option}"] = _train(f"{group}={option}", rank, world)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_match_one_for_every_attention_and_optimizer(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.set_num_threads(1)
    for key in r0:
        single_losses, single_state = _train(key, 0, 1)
        (l0, s0), (l1, s1) = r0[key], r1[key]
        for name in s0:  # every rank holds identical parameters and buffers (Q-tables, skip state, ...)
            if torch.is_tensor(s0[name]):
                torch.testing.assert_close(
                    s0[name], s1[name], rtol=0, atol=0, msg=f"{key}: {name} differs across ranks"
                )
            else:
                assert s0[name] == s1[name], f"{key}: {name} differs across ranks"
        assert l0 == pytest.approx(single_losses, rel=2e-3, abs=2e-3), key
        for name in single_state:
            if torch.is_tensor(single_state[name]) and single_state[name].is_floating_point():
                torch.testing.assert_close(
                    s0[name], single_state[name], rtol=2e-3, atol=2e-3, msg=f"{key}: {name} differs from one process"
                )


@pytest.mark.slow
def test_lightning_ddp_spawn_run(tmp_path):
    cfg = api.compose([*TINY, "trainer=ddp_cpu", "trainer.max_steps=6", "data.batch_size=4"], run_dir=tmp_path / "ddp")
    summary = api.train(cfg)
    single = api.train(api.compose([*TINY, "trainer.max_steps=6", "data.batch_size=4"], run_dir=tmp_path / "one"))
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-3)
    a = torch.load(tmp_path / "ddp/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "one/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
    assert json.loads((tmp_path / "ddp/summary.json").read_text())["val_history"]
