"""A NaN injected at a chosen step stops the run with a message naming the step and parameter."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from famlab import api
from famlab.lit.nonfinite import NonFiniteError
from famlab_testing import TINY


class InjectNaN(pl.Callback):
    """Puts a NaN into one parameter's gradient at optimizer step ``step`` (1-based)."""

    def __init__(self, step: int, param: str):
        self.step, self.param = step, param

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step + 1 == self.step:
            dict(pl_module.named_parameters())[self.param].grad.view(-1)[0] = float("nan")


def _train(tmp_path, name, *extra):
    cfg = api.compose(
        [
            *TINY,
            "trainer.max_steps=12",
            "trainer.val_check_interval=4",
            "log_every_n_steps=4",
            "+callbacks.inject._target_=test_nonfinite.InjectNaN",
            "+callbacks.inject.step=6",
            "+callbacks.inject.param=model.blocks.1.mlp.fc.weight",
            *extra,
        ],
        run_dir=tmp_path / name,
    )
    return api.train(cfg)


def test_nan_stops_run_naming_step_and_parameter_and_keeps_good_checkpoint(tmp_path):
    with pytest.raises(
        NonFiniteError,
        match=r"at step 6; first parameter with a non-finite gradient: "
        r"model.blocks.1.mlp.fc.weight",
    ):
        _train(tmp_path, "nan")
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "step 6" in summary["error"]
    state = torch.load(tmp_path / "nan" / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4  # the checkpoint before the bad step
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


@pytest.mark.parametrize("optimizer", ["adamw", "fam"])
def test_skip_policy_drops_the_bad_step(tmp_path, optimizer):
    summary = _train(tmp_path, "skip", "callbacks.nonfinite.policy=skip", f"optimizer={optimizer}")
    assert summary["status"] == "completed" and summary["steps"] == 12
    state = torch.load(tmp_path / "skip" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    if optimizer == "fam":  # the band statistics stayed finite too
        for s in state["optimizer_states"][0]["state"].values():
            for v in s.values():
                if torch.is_tensor(v) and v.is_floating_point():
                    assert torch.isfinite(v).all()


def test_max_loss_counts_a_finite_blow_up_as_divergence(tmp_path):
    cfg = api.compose(
        [
            *TINY,
            "trainer.max_steps=12",
            "trainer.val_check_interval=4",
            "log_every_n_steps=4",
            "callbacks.nonfinite.max_loss=0.5",
        ],
        run_dir=tmp_path / "blow",
    )
    with pytest.raises(
        NonFiniteError, match=r"at step 1; the loss was not finite or above callbacks.nonfinite.max_loss=0.5"
    ):
        api.train(cfg)
    assert json.loads((tmp_path / "blow" / "summary.json").read_text())["status"] == "diverged"


def test_clipping_with_the_guards_norms_matches_lightnings_clipping(tmp_path, monkeypatch):
    """LitLM clips with the 2-norms NonFiniteGuard took: the weights are bit for bit those of a run
    without the guard (Lightning's own clip_grad_norm_), with clipping active at every step."""
    runs, calls = {}, []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: calls.append(1) or clip(*a, **k))
    for name, extra in (("guard", []), ("plain", ["callbacks.nonfinite=null"])):
        calls.clear()
        cfg = api.compose(
            [*TINY, "trainer.max_steps=6", "trainer.val_check_interval=6", "trainer.gradient_clip_val=0.05", *extra],
            run_dir=tmp_path / name,
        )
        api.train(cfg)
        runs[name] = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert len(calls) == (0 if name == "guard" else 6)  # the guard's norms replace Lightning's call
    assert runs["guard"].keys() == runs["plain"].keys()
    assert all(torch.equal(runs["guard"][k], runs["plain"][k]) for k in runs["guard"])
