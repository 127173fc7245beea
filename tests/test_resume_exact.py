"""Exact resume in the cases the plain resume test does not reach: dropout (the global torch RNG),
gradient accumulation (the stream position), FAM's sampling generator, CUDA generator states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from famlab import api
from famlab_testing import TINY

STOP = ["+callbacks.stop._target_=famlab.lit.interrupt.StopAtStep", "+callbacks.stop.step=5"]
SHORT = ["trainer.max_steps=8", "trainer.val_check_interval=4"]


def _train(tmp_path, name, *overrides):
    base = [o for o in TINY if not (o.startswith("model=") and any(x.startswith("model=") for x in overrides))]
    cfg = api.compose([*base, *SHORT, f"run_name={name}", f"out_root={tmp_path}", *overrides], run_dir=tmp_path / name)
    return api.train(cfg)


def _state(run_dir: Path) -> dict:
    """Weights, buffers and every optimizer state tensor (FAM's sampling generator included)."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    flat = dict(state["state_dict"])
    for i, opt in enumerate(state["optimizer_states"]):
        for p, s in opt["state"].items():
            flat.update({f"optimizer{i}.{p}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
        rng = opt.get("fam_rng")
        for k, v in rng.items() if isinstance(rng, dict) else [("", rng)] if rng is not None else []:
            flat[f"optimizer{i}.fam_rng.{k}"] = v
    return flat


def _stop_resume_compare(tmp_path, *overrides, atol: float = 0.0) -> tuple[dict, dict]:
    full = _train(tmp_path, "full", *overrides)
    part = _train(tmp_path, "part", *overrides, *STOP)
    assert part["status"] == "interrupted" and part["steps"] == 5
    resumed = _train(tmp_path, "part", *overrides, "resume=auto")
    assert resumed["status"] == "completed" and resumed["steps"] == 8
    a, b = _state(tmp_path / "full"), _state(tmp_path / "part")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)
    if atol == 0:
        assert resumed["final_val_loss"] == full["final_val_loss"]
    return full, resumed


# every model size with dropout on; base keeps its own dropout (0.2), depth and heads, with narrower
# layers and a shorter context so that three short runs stay cheap on a CPU
SIZES = {
    "tiny": ["model.dropout=0.1"],
    "small": ["model=small", "model.dropout=0.1"],
    "base": ["model=base", "model.dims=96", "model.context=64"],
}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_exact_resume_with_dropout(tmp_path, size):
    _stop_resume_compare(tmp_path, *SIZES[size])
    cfg = api.compose(["model=base"])
    assert cfg.model.dropout == 0.2 and cfg.model.layers == 6 and cfg.model.heads == 6


@pytest.mark.gpu
def test_exact_resume_with_dropout_on_cuda(tmp_path):
    """Dropout on a GPU draws from the CUDA generator: its state must travel with the checkpoint.
    (A small tolerance: CUDA's embedding backward accumulates with atomics, in any order.)"""
    _stop_resume_compare(tmp_path, "model.dropout=0.1", "trainer.accelerator=gpu", "trainer.devices=1", atol=1e-5)
    famlab_state = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)["famlab"]
    assert len(famlab_state["cuda_rng"]) == torch.cuda.device_count()


def test_exact_resume_with_gradient_accumulation(tmp_path):
    """Two batches per optimizer step: the stream must resume at batch 2 * step, not at batch step."""
    _stop_resume_compare(tmp_path, "trainer.accumulate_grad_batches=2")


def test_exact_resume_of_fam_sampling_generator_on_a_large_weight(tmp_path):
    """FAM samples weights above 10,000 elements with its own generator (the MLP weights of model=tiny,
    64 x 256 = 16,384): the generator's saved state must be the one a resumed run continues from."""
    _stop_resume_compare(tmp_path, "optimizer=fam", "optimizer.analysis.fam_start_step=2", "optimizer.lr=0.05")
    ckpt = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    rng = ckpt["optimizer_states"][0]["fam_rng"]
    assert isinstance(rng, dict) and "cpu" in rng  # the generator was used (and saved) by the sampling
    ckpt = _state(tmp_path / "part")
    assert any(v.numel() > 10_000 for k, v in ckpt.items() if k.startswith("model.") and k.endswith("weight"))


def test_exact_resume_in_the_middle_of_a_fam_analysis_interval(tmp_path):
    """FAM analyses at steps 3 and 6 (fam_start_step 2, interval 3); the run stops after step 5, between two
    analyses: the optimizer's step counter must travel with the checkpoint for step 6 to analyse again."""
    _stop_resume_compare(
        tmp_path,
        "optimizer=fam",
        "optimizer.analysis.fam_start_step=2",
        "optimizer.analysis.interval=3",
        "optimizer.lr=0.05",
    )
    ckpt = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["fam_steps"] == 8
    counts = {s["fam_count"] for s in ckpt["optimizer_states"][0]["state"].values() if "fam_count" in s}
    assert counts == {2}  # steps 3 and 6


def test_checkpoint_carries_cuda_generator_states_when_cuda_is_in_use(monkeypatch):
    """With CUDA in use, every device's generator state is saved and restored (mocked on a CPU machine)."""
    saved = [torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)]
    calls: dict = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.setdefault("all", states))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: calls.setdefault("one", (s, device)))
    from famlab.lit.module import LitLM

    module = LitLM(torch.nn.Linear(2, 2), None, None, total_steps=1)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["famlab"]["cuda_rng"] is saved and checkpoint["famlab"]["cuda_device"] == 1
    assert torch.equal(checkpoint["famlab"]["torch_rng"], torch.get_rng_state())
    module.on_load_checkpoint(checkpoint)
    assert calls["all"] is saved
    assert torch.equal(calls["one"][0], saved[1]) and calls["one"][1] == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CUDA checkpoint resumed on a CPU
    calls.clear()
    module.on_load_checkpoint(checkpoint)
    assert not calls


def test_every_checkpoint_load_is_weights_only_and_every_save_says_what_it_saves(tmp_path, caplog, monkeypatch):
    """Lightning logs "`weights_only` was not set, defaulting to `False`" when a save leaves it unset;
    every torch.load of a stop / off-interval save / resume / load_run cycle passes weights_only=True."""
    import logging

    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    caplog.set_level(logging.INFO)
    odd = ["trainer.max_steps=7", "trainer.val_check_interval=3"]  # the last step is off the interval
    assert _train(tmp_path, "w", *odd, *STOP)["status"] == "interrupted"
    assert _train(tmp_path, "w", *odd, "resume=auto")["steps"] == 7
    api.load_run(tmp_path / "w", which="last")
    assert loads and all(w is True for w in loads), loads
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]
