"""Shared test helpers (imported as ``famlab_testing``): offline environment, tiny overrides,
option discovery, quick training steps. ``conftest.py`` cannot be imported by name: several exist."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the suite's own test callbacks, which training configs name as _target_ (famlab.allowlist)
os.environ.setdefault("FAMLAB_ALLOW_TARGETS", "test_nonfinite,test_progress,test_sigterm_ddp")
# One intra-op thread per process: tests start several processes (CLI runs, DDP ranks, sweeps) on
# 2 cores, and OpenMP threads that wait at barriers for a busy core slow a step down 10x.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare.txt"

# a run that takes seconds (tiny model, 6 steps, small batches, CSV logging only): conf/debug/tiny.yaml,
# the same config users run with `python train.py debug=tiny`
TINY = ["debug=tiny"]


def options(group: str) -> list[str]:
    """Every option of a config group, read from conf/<group>/*.yaml."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def group_option(group: str, name: str):
    """conf/<group>/<name>.yaml with its defaults list applied (a derived option such as
    attention=local_global includes its parent), interpolations left unresolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF / group), version_base="1.3"):
        return compose(config_name=name)


def quick_steps(
    model: torch.nn.Module,
    optimizer,
    steps: int = 2,
    vocab: int | None = None,
    seq: int = 16,
    batch: int = 2,
    seed: int = 0,
) -> list[float]:
    """A few plain training steps on random tokens; returns the losses (used to sweep options fast)."""
    g = torch.Generator().manual_seed(seed)
    vocab = vocab or model.vocab_size
    x = torch.randint(0, vocab, (batch, seq + 1), generator=g)
    losses = []
    for _ in range(steps):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        aux = model.aux_loss()
        optimizer.zero_grad()
        (loss if aux is None else loss + aux).backward()
        optimizer.step()
        model.post_step(loss=loss.detach())
        losses.append(float(loss))
    return losses


from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


class HostSyncCatcher(TorchDispatchMode):
    """Counts tensor -> Python conversions (``.item()``, ``float(t)``, a tensor in an ``if``: all end in
    ``aten::_local_scalar_dense``) and device -> host copies; with ``fail=True`` the first one raises."""

    def __init__(self, fail: bool = True):
        super().__init__()
        self.fail, self.syncs = fail, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        sync = func is torch.ops.aten._local_scalar_dense.default
        if func is torch.ops.aten._to_copy.default and args[0].device.type != "cpu":
            sync = str(kwargs.get("device", args[0].device)) == "cpu"
        if sync:
            self.syncs += 1
            if self.fail:
                raise AssertionError(f"host sync ({func}) in the training path")
        return func(*args, **kwargs)
