"""No inert key: perturbing any key of any conf/optimizer or conf/scheduler option changes what it builds.

Options are discovered by listing the YAML files, keys by walking the composed config, so a new option needs no
edit here. An optimizer counts as changed when its hyperparameters, its state or the parameters differ after
the first steps on a small model whose parameters fall in every FAM group (synthetic seeded gradients, enough
steps for the analysis to start); a refusal (``ValueError("optimizer....")``) also shows the key is read.
A scheduler counts as changed when its learning-rate curve differs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from famlab.optim.factories import for_model
from famlab.optim.fam_config import CHOICES, SEED_ANALYSIS

CONF = Path(__file__).resolve().parents[2] / "conf"
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted(p.stem for p in (CONF / "scheduler").glob("*.yaml"))
NULL_REPLACEMENTS = {"fused": True, "analysis": SEED_ANALYSIS}  # typed stand-ins for keys whose value is null


def _compose(group: str, option: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(overrides=[f"+{group}={option}", "+trainer=cpu"])
    return OmegaConf.to_container(cfg[group], resolve=True)


def _leaves(node, path=()):
    """Paths of every leaf (list elements one by one), except Hydra's ``_target_`` / ``_partial_``."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if key in ("_target_", "_partial_"):
            continue
        if isinstance(value, (dict, list)) and value:
            yield from _leaves(value, path + (key,))
        else:
            yield path + (key,)


def _perturbed(key, value):
    """A different valid-looking value of the same kind."""
    if value is None:
        return copy.deepcopy(NULL_REPLACEMENTS[key])
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        options = CHOICES[key]
        return options[(options.index(value) + 1) % len(options)]
    if isinstance(value, int):
        return 2 * value + 2  # 0 -> 2: a one-step warm-up equals none
    if value == 0:
        return 0.1
    if value < 1e-3:
        return value * 1e4
    return value / 2 if value < 1 else value * 2


def _with(cfg: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _perturbations(cfg: dict):
    for path in _leaves(cfg):
        node = cfg
        for key in path:
            node = node[key]
        named = next(k for k in reversed(path) if isinstance(k, str))
        yield ".".join(map(str, path)), _with(cfg, path, _perturbed(named, node))


class Zoo(nn.Module):
    """One module of every FAM group; sizes straddle the sampling threshold (10000) and min_size (256 -> 513)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(200, 64)  # embedding, 12800 elements: sampled
        self.conv = nn.Conv1d(64, 64, 3)  # conv, 12288: sampled
        self.attn = nn.MultiheadAttention(64, 4)  # attention (in_proj 12288 sampled, out_proj 4096)
        self.fc = nn.Linear(64, 64)  # default, 4096
        self.norm = nn.LayerNorm(300)  # norm, 300 elements: analysed at min_size 256, not at 513


STEPS = 110  # past the shipped fam_start_step (100) and a second analysis at the shipped interval (8)


def _gradients():
    gen = torch.Generator().manual_seed(0)
    shapes = [p.shape for p in Zoo().parameters()]
    return [[torch.randn(s, generator=gen) * 1e-2 for s in shapes] for _ in range(STEPS)]


GRADS = _gradients()


def _trace(cfg: dict):
    """Hyperparameters, state and parameters of the optimizer built from ``cfg`` after STEPS steps."""
    torch.manual_seed(0)
    model = Zoo()
    opt = for_model(instantiate(OmegaConf.create(cfg)))(model)
    params = list(model.parameters())
    for grads in GRADS:
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    hyper = [{k: v for k, v in g.items() if k not in ("params",)} for g in opt.param_groups]
    hyper.append({k: v for k, v in vars(opt).items() if isinstance(v, (int, float, str, bool))})
    state = [(k, v) for p in params for k, v in sorted(opt.state[p].items())]
    return hyper, state, [p.detach().clone() for p in params]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("option", OPTIMIZERS)
def test_every_optimizer_key_changes_the_optimizer(option):
    cfg = _compose("optimizer", option)
    base = _trace(cfg)
    inert, refused = [], []
    for key, changed in _perturbations(cfg):
        try:
            trace = _trace(changed)
        except ValueError as e:
            assert str(e).startswith("optimizer."), f"{key}: {e}"
            refused.append(key)
            continue
        if _same(base, trace):
            inert.append(key)
    assert not inert, f"optimizer={option}: these keys change nothing: {inert}"
    assert len(refused) <= 2, f"optimizer={option}: too many perturbations refused: {refused}"


@pytest.mark.parametrize("option", SCHEDULERS)
def test_every_scheduler_key_changes_the_schedule(option):
    def curve(cfg):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = instantiate(OmegaConf.create(cfg))(opt, total_steps=500)
        lrs = [sched.get_last_lr()[0]]  # the lr of the first step
        for _ in range(520):
            opt.step()
            sched.step()
            lrs.append(sched.get_last_lr()[0])
        return lrs

    cfg = _compose("scheduler", option)
    base = curve(cfg)
    inert = [key for key, changed in _perturbations(cfg) if curve(changed) == base]
    assert not inert, f"scheduler={option}: these keys change nothing: {inert}"


def test_the_perturbation_walk_sees_every_table_entry():
    keys = [k for k, _ in _perturbations(_compose("optimizer", "fam"))]
    assert {"groups.norm.wd_scale", "analysis.handlers.conv.n_bands", "analysis.seed", "lr", "grouping"} <= set(keys)
    assert len(keys) == 4 + 5 * 3 + 8 + 5 * 2  # lr, weight_decay, base, grouping; groups; analysis; handlers
