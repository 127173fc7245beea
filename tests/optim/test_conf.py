"""Every conf/optimizer and conf/scheduler YAML instantiates through Hydra and is commented."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.model.transformer import TransformerLM
from famlab.optim.factories import for_model
from famlab.optim.fam import FAMOptimizer

CONF = Path(__file__).resolve().parents[2] / "conf"
OPTIMIZERS = sorted((CONF / "optimizer").glob("*.yaml"))
SCHEDULERS = sorted((CONF / "scheduler").glob("*.yaml"))


def _load(path: Path):
    """Compose ``<group>/<option>`` through Hydra (resolves the defaults lists of fam_* options)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            overrides=[f"+{path.parent.name}={path.stem}", "+trainer=cpu"]
        )  # schedulers read trainer.max_steps
    return cfg[path.parent.name]


def _model():
    return TransformerLM(vocab_size=32, dims=16, layers=1, heads=2, context=8)


@pytest.mark.parametrize("path", OPTIMIZERS + SCHEDULERS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_yaml_is_commented(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#")
    keys = [l for l in lines if l and not l.startswith(("#", " ", "_target_", "_partial_", "defaults:"))]
    assert all("#" in l for l in keys), f"uncommented keys in {path.name}: {keys}"


@pytest.mark.parametrize("path", OPTIMIZERS, ids=lambda p: p.stem)
def test_optimizer_yaml_builds_and_steps(path):
    model = _model()
    node = _load(path)
    opt = for_model(instantiate(node))(model)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.defaults["lr"] == node.lr  # the YAML's lr reached the optimizer ...
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(map(id, model.parameters()))
    if isinstance(opt, FAMOptimizer):  # the YAML's settings reached the optimizer (and its state_dict)
        plain = OmegaConf.to_container(node, resolve=True)
        analysis = plain["analysis"]
        settings = {k: v for k, v in {**plain, **(analysis or {})}.items() if k in opt.defaults}
        settings["analysis"] = analysis is not None
        assert {"base", "lr", "weight_decay"} <= set(settings)
        assert all(opt.defaults[k] == v and opt.state_dict()["param_groups"][0][k] == v for k, v in settings.items())
        for g in opt.param_groups:  # ... and so did each group's row of the table
            row = plain["groups"][g["group"]]
            assert (g["alpha"], g["lr"]) == (row["alpha"], pytest.approx(plain["lr"] * row["lr_scale"]))
            if analysis is not None:
                assert g["n_bands"] == analysis["handlers"][g["group"]]["n_bands"]
    model(torch.randint(0, 32, (2, 8))).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("path", SCHEDULERS, ids=lambda p: p.stem)
def test_scheduler_yaml_builds(path):
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    sched = instantiate(_load(path))(opt, total_steps=200)
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for _ in range(3):
        opt.step()
        sched.step()
    assert 0 < sched.get_last_lr()[0] <= 0.1
