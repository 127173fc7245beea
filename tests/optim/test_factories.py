"""Optimizer factories: decay/no-decay groups, tied weights once, validation naming optimizer.<key>."""

import pytest
import torch

from famlab.model.transformer import TransformerLM
from famlab.optim import factories as F
from famlab.optim.fam_config import SEED_ANALYSIS


@pytest.fixture(scope="module")
def model():
    return TransformerLM(vocab_size=32, dims=16, layers=2, heads=2, context=8)


def _ids(opt):
    return [id(p) for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("make", [F.adamw, F.adam, F.sgd])
def test_groups_cover_every_param_once(model, make):
    opt = make(model)
    ids = _ids(opt)
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied head/embedding counted once
    by_name = {g["group"]: g for g in opt.param_groups}
    assert all(p.ndim >= 2 for p in by_name["decay"]["params"])
    assert all(p.ndim < 2 for p in by_name["no_decay"]["params"]) and by_name["no_decay"]["weight_decay"] == 0.0
    assert "tok_emb.weight" in by_name["decay"]["names"]
    assert any(n.endswith("ln_1.weight") for n in by_name["no_decay"]["names"])


def test_adamw_settings(model):
    opt = F.adamw(model, lr=3e-4, weight_decay=0.05, betas=(0.8, 0.9), fused=False)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["foreach"]
    g = {g["group"]: g for g in opt.param_groups}
    assert g["decay"]["weight_decay"] == 0.05 and g["decay"]["lr"] == 3e-4 and g["decay"]["betas"] == (0.8, 0.9)
    loss = model(torch.randint(0, 32, (2, 8))).square().mean()
    loss.backward()
    opt.step()  # runs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=0.0), "optimizer.lr"),
        (dict(lr=-1), "optimizer.lr"),
        (dict(weight_decay=-0.1), "optimizer.weight_decay"),
        (dict(betas=(0.9,)), "optimizer.betas"),
        (dict(betas=(0.9, 1.0)), r"optimizer.betas\[1\]"),
        (dict(eps=0), "optimizer.eps"),
    ],
)
def test_adamw_validation(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.adamw(model, **kwargs)


def test_sgd_validation(model):
    with pytest.raises(ValueError, match="optimizer.momentum"):
        F.sgd(model, momentum=1.5)
    with pytest.raises(ValueError, match="optimizer.nesterov"):
        F.sgd(model, momentum=0.0, nesterov=True)
    opt = F.sgd(model, lr=0.01, momentum=0.5, nesterov=True)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.5


ANALYSIS = {**SEED_ANALYSIS, "fam_start_step": 3, "min_size": 256}


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(base="adam", weight_decay=0.1),
        dict(analysis={**ANALYSIS, "spectrum": "temporal", "window": 8}),
        dict(analysis=None),
    ],
    ids=["fam", "fam_adam", "fam_temporal", "fam_constant"],
)
def test_fam_variants_reduce_loss_on_a_tiny_model(variant):
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=32, dims=32, layers=1, heads=2, context=16)
    lr = 1e-2 if variant.get("base") == "adam" else 1.0
    opt = F.fam(model, lr=lr, **{"analysis": ANALYSIS, **variant})
    x = torch.randint(0, 32, (8, 17), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    active = [st for st in opt.state.values() if st.get("fam_count", 0) > 0]
    assert bool(active) == (variant.get("analysis", ANALYSIS) is not None)


def test_fam_factory_validation():
    model = TransformerLM(vocab_size=32, dims=16, layers=1, heads=2, context=8)
    with pytest.raises(ValueError, match="optimizer.lr"):
        F.fam(model, lr=0)
    with pytest.raises(ValueError, match="optimizer.base"):
        F.fam(model, base="lion")
