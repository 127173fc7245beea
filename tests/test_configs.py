"""Every option of every config group composes, builds and trains a few steps on the tiny model."""

from __future__ import annotations

import itertools

import pytest
import torch

from famlab import api
from famlab.build import build_optimization
from famlab_testing import TINY, options, quick_steps

GROUPS = [
    "optimizer",
    "position",
    "attention",
    "data",
    "model",
    "scheduler",
    "trainer",
    "logger",
    "callbacks",
    "launcher",
    "experiment",
]


def test_config_groups_exist_with_design_options():
    for group in GROUPS:
        assert (api.CONF_DIR / group).is_dir(), group
    assert {"adamw", "adam", "sgd"} <= set(options("optimizer"))
    assert {"rotary", "none"} <= set(options("position"))
    assert {"standard"} <= set(options("attention"))
    assert {"tiny", "small", "base"} <= set(options("model"))
    assert {"embedded", "text_files", "recall"} <= set(options("data"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = api.compose([*TINY, f"{group}={option}"] + (["data.corpus.path=x.txt"] if option == "text_files" else []))
    assert cfg.hydra.runtime.choices[group] == option


def _model(overrides):
    cfg = api.compose([*TINY, *overrides])
    return cfg, api.build_model(cfg, vocab_size=40)


@pytest.mark.parametrize("attention,position", list(itertools.product(options("attention"), options("position"))))
def test_attention_position_product_trains(attention, position):
    torch.manual_seed(0)
    cfg, model = _model([f"attention={attention}", f"position={position}"])
    optimizer, _ = build_optimization(cfg, model)
    losses = quick_steps(model, optimizer(model), steps=2)
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("optimizer,attention", list(itertools.product(options("optimizer"), options("attention"))))
def test_optimizer_attention_product_trains(optimizer, attention):
    torch.manual_seed(0)
    cfg, model = _model([f"optimizer={optimizer}", f"attention={attention}"])
    factory, scheduler = build_optimization(cfg, model)
    opt = factory(model)
    before = [p.detach().clone() for p in model.parameters()]
    losses = quick_steps(model, opt, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters())), "no parameter moved"


@pytest.mark.parametrize("size", options("model"))
def test_model_sizes_train(size):
    # a fixed small lr: these two steps run at peak lr without warm-up, which overshoots on gpt2_small
    cfg = api.compose([*TINY, f"model={size}", "optimizer.lr=1e-3"])
    model = api.build_model(cfg, vocab_size=64)
    assert model.context == cfg.model.context and model.dims == cfg.model.dims
    factory, _ = build_optimization(cfg, model)
    losses = quick_steps(model, factory(model), steps=2, seq=min(32, cfg.model.context))
    assert losses[-1] < losses[0] + 1e-3


def test_base_is_nanogpt_shakespeare_size():
    cfg = api.compose(["model=base"])
    assert (cfg.model.layers, cfg.model.heads, cfg.model.dims, cfg.model.context) == (6, 6, 384, 256)


@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_schedulers_follow_trainer_max_steps(scheduler):
    cfg = api.compose(
        [*TINY, f"scheduler={scheduler}", "trainer.max_steps=20"]
        + ([] if scheduler == "constant" else ["scheduler.warmup_steps=4"])
    )
    model = api.build_model(cfg, vocab_size=32)
    factory, sched_factory = build_optimization(cfg, model)
    opt = factory(model)
    sched = sched_factory(opt, total_steps=20)
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(lr > 0 for lr in lrs) and max(lrs) <= cfg.optimizer.lr * (1 + 1e-6)
    if scheduler != "constant":
        assert lrs[0] < max(lrs) and lrs[-1] < max(lrs)  # warm-up then decay, clamped after the end
