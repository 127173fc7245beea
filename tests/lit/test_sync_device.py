"""NCCL's rule on the CPU: every value logged with ``sync_dist=True`` lives on the module's device.

NCCL all-reduces device tensors only (a CPU tensor raises "No backend type associated with device
type cpu"). Here the module lives on the meta device, so any tensor built without the module's device
(``torch.tensor(x)`` lands on the CPU) is caught; a Python number is fine (Lightning puts it on
``self.device``). Then a real 2-rank gloo group whose synced values are checked by a patched
``all_reduce`` runs a Lightning validation end to end.
"""

from __future__ import annotations

import numbers

import pytest
import torch

from famlab import api
from famlab.lit.module import LitLM
from famlab_testing import TINY


def _module(device: str) -> LitLM:
    cfg = api.compose(TINY)
    model = api.build_model(cfg, vocab_size=40)
    return LitLM(model, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1), scheduler=None, total_steps=10).to(
        device
    )


def _logged(module: LitLM) -> list[tuple[str, object, bool]]:
    calls = []
    module.log = lambda name, value, sync_dist=False, **kw: calls.append((name, value, sync_dist))
    module.log_dict = lambda d, sync_dist=False, **kw: calls.extend((k, v, sync_dist) for k, v in d.items())
    return calls


def _on_module_device(value, device: torch.device) -> bool:
    return isinstance(value, numbers.Number) or (torch.is_tensor(value) and value.device == device)


def test_validation_metrics_synced_across_ranks_live_on_the_module_device():
    module = _module("meta")
    assert module.device.type == "meta"
    calls = _logged(module)
    module.on_validation_epoch_start()
    module._val += torch.ones(3, device=module.device)
    module._val_batches = 1
    module.on_validation_epoch_end()
    synced = [(name, v) for name, v, sync in calls if sync]
    assert {"val/loss", "val/bpc", "val/acc"} <= {name for name, _ in synced}
    for name, value in synced:
        assert _on_module_device(value, module.device), f"{name} is synced but lives on {getattr(value, 'device', '?')}"
    elapsed = [v for name, v, sync in calls if name == "perf/elapsed_s"]
    assert elapsed and all(not sync for name, _, sync in calls if name == "perf/elapsed_s")  # a wall time is per rank


class _ForeignDefaultTorch:
    """``torch`` as ``famlab.lit.module`` sees it, except that a tensor built without ``device=`` lands
    on the meta device: on a GPU it would land on the CPU, away from the module's device."""

    def __getattr__(self, name):
        fn = getattr(torch, name)
        if name in ("tensor", "as_tensor", "zeros", "ones", "full", "empty"):
            return lambda *a, **kw: fn(*a, **{"device": "meta", **kw}) if kw.get("device") is None else fn(*a, **kw)
        return fn


@pytest.mark.slow
def test_ddp_validation_syncs_only_module_device_tensors(tmp_path, monkeypatch):
    """A 1-process Lightning DDP validation (gloo) whose ``all_reduce`` refuses, as NCCL does, every
    tensor off the module's device, while the module's own code builds device-less tensors elsewhere."""
    import lightning.pytorch as pl
    import torch.distributed as dist
    from lightning.pytorch.strategies import DDPStrategy

    import famlab.lit.module as lit_module
    from famlab.build import build_datamodule

    seen = []
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):  # the module lives on the CPU here
        seen.append(tensor.device)
        if tensor.device.type != "cpu":
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
        return real(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    cfg = api.compose(TINY)
    dm = build_datamodule(cfg)
    module = LitLM(
        api.build_model(cfg, vocab_size=dm.vocab_size),
        optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        scheduler=None,
        total_steps=2,
    )
    monkeypatch.setattr(lit_module, "torch", _ForeignDefaultTorch())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=2,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )
    try:
        trainer.validate(module, datamodule=dm, verbose=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert seen, "validation synced nothing"
    assert {"val/loss", "val/acc", "perf/elapsed_s"} <= set(trainer.callback_metrics)
