"""``trainer=fsdp`` on the CPU: the pieces famlab adds, checked with two gloo ranks and plain FSDP
(Lightning refuses FSDP without a GPU), and each refused combination as one line with exit 2."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from famlab import api
from famlab.build import build_optimization
from famlab.errors import ConfigError
from famlab.lit.fsdp import fsdp_strategy, is_fsdp, record_unsharded_shapes, strategy_class
from famlab.lit.module import LitLM
from famlab.lit.position_monitor import position_metrics
from famlab.model.transformer import Block
from famlab.optim.factories import decay_groups
from famlab_testing import TINY

REPO = Path(__file__).resolve().parents[2]


def test_strategy_wraps_blocks_keeps_original_parameters_and_fp32_buffers():
    strategy = fsdp_strategy()
    assert is_fsdp(strategy) and is_fsdp("fsdp") and not is_fsdp("ddp")
    policy = strategy.kwargs["auto_wrap_policy"]
    assert Block in policy._module_classes
    assert strategy.kwargs["use_orig_params"] is True
    mp_cfg = strategy.mixed_precision
    assert (mp_cfg.param_dtype, mp_cfg.reduce_dtype, mp_cfg.buffer_dtype) == (torch.float32,) * 3


def test_strategy_class_from_registry_names_target_nodes_and_objects():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
    from omegaconf import OmegaConf

    assert strategy_class("fsdp") is FSDPStrategy and strategy_class("fsdp_cpu_offload") is FSDPStrategy
    assert strategy_class("ddp_spawn") is DDPStrategy and strategy_class("auto") is None
    node = OmegaConf.create({"_target_": "lightning.pytorch.strategies.FSDPStrategy"})
    assert strategy_class(node) is FSDPStrategy and is_fsdp(node)
    assert strategy_class(fsdp_strategy()) is FSDPStrategy and not is_fsdp(None)


def test_gradient_clipping_goes_through_fsdp_clip_grad_norm():
    module = LitLM(api.build_model(api.compose(TINY), vocab_size=40), optimizer=None, scheduler=None, total_steps=1)
    calls = []
    root = SimpleNamespace(clip_grad_norm_=lambda v: calls.append(v))
    fake = SimpleNamespace(strategy=fsdp_strategy(), model=root)
    module._trainer = fake  # what Lightning sets when it attaches the module
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    assert calls == [1.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimizer=fam"], r"optimizer=fam needs whole parameter tensors.*trainer.strategy=fsdp"),
        (["optimizer=fam_adam"], r"optimizer=fam\w* needs whole parameter tensors"),
        (["attention=adaptive_span"], r"attention=adaptive_span updates its span parameters.*trainer=ddp"),
        (["position=quaternion"], r"trainer=fsdp cannot shard the scalar parameter .*rscale"),
        (["position=projection"], r"trainer=fsdp cannot shard the scalar parameter .*rscale"),
        (
            ["+trainer.gradient_clip_algorithm=value"],
            r"trainer.gradient_clip_algorithm=value is not supported with trainer=fsdp",
        ),
    ],
)
def test_unsupported_combinations_are_refused(overrides, message):
    cfg = api.compose([*TINY, "trainer=fsdp", *overrides])
    with pytest.raises(ConfigError, match=message):
        build_optimization(cfg, api.build_model(cfg, vocab_size=40))


def test_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            "trainer=fsdp",
            "attention=adaptive_span",
            f"out_root={tmp_path}",
            "run_name=r",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("famlab: error: attention=adaptive_span")
    assert not (tmp_path / "train" / "runs" / "r").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, out: str) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)
    cfg = api.compose(TINY)  # position=rotary: learned frequencies
    model = api.build_model(cfg, vocab_size=40)
    record_unsharded_shapes(model)
    whole = {g["group"]: sorted(g["names"]) for g in decay_groups(model, 0.1)}
    reference = api.build_model(cfg, vocab_size=40)
    reference.load_state_dict(model.state_dict())
    strategy = fsdp_strategy()
    sharded = FSDP(model, device_id=torch.device("cpu"), mixed_precision=strategy.mixed_precision, **strategy.kwargs)
    groups = {
        g["group"]: sorted(n.replace("_fsdp_wrapped_module.", "") for n in g["names"])
        for g in decay_groups(sharded, 0.1)
    }
    x = torch.randint(0, 40, (2, 17), generator=torch.Generator().manual_seed(1))
    for net in (sharded, reference):
        torch.nn.functional.cross_entropy(net(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).backward()
    norm = float(sharded.clip_grad_norm_(1e9))
    ref_norm = float(torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9))
    with FSDP.summon_full_params(sharded, writeback=False):
        positions = {k: v.clone() for k, v in position_metrics(model).items()}
    ref_positions = position_metrics(reference)
    torch.save(
        {
            "whole": whole,
            "groups": groups,
            "norm": norm,
            "ref_norm": ref_norm,
            "positions": positions,
            "ref_positions": ref_positions,
            "buffers": {n: b.dtype for n, b in sharded.named_buffers()},
        },
        f"{out}/rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_fsdp_pieces_match_the_unsharded_model(tmp_path):
    import time

    ctx = mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("FSDP ranks hung")
    for rank in (0, 1):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert r["groups"] == r["whole"] and r["groups"]["decay"], "decay groups follow the unsharded shapes"
        assert r["norm"] == pytest.approx(r["ref_norm"], rel=1e-5), "clipping sees the norm over all shards"
        assert r["positions"].keys() == r["ref_positions"].keys() and r["positions"]
        for k in r["positions"]:
            torch.testing.assert_close(r["positions"][k], r["ref_positions"][k])
        assert all(dtype == torch.float32 for dtype in r["buffers"].values() if dtype.is_floating_point)
