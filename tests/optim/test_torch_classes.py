"""A ``torch.optim.Optimizer`` subclass as ``_target_`` needs no factory: it gets famlab's parameter groups."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from famlab import api
from famlab.errors import ConfigError
from famlab.model.transformer import TransformerLM
from famlab.optim import factories as F
from famlab_testing import TINY


def _model():
    return TransformerLM(vocab_size=32, dims=16, layers=1, heads=2, context=8)


def test_a_yaml_in_a_config_dir_of_ones_own_trains(tmp_path):
    conf = tmp_path / "my_conf" / "optimizer"
    conf.mkdir(parents=True)
    (conf / "rmsprop_plain.yaml").write_text(
        "# RMSprop from torch.optim\n_target_: torch.optim.RMSprop\n_partial_: true\n"
        "lr: 3.0e-3\nalpha: 0.95\nweight_decay: 0.01\nmomentum: 0.5\n"
    )
    overrides = [*TINY, "optimizer=rmsprop_plain", f"hydra.searchpath=[file://{conf.parent}]", f"out_root={tmp_path}"]
    cfg = api.compose(overrides, run_dir=tmp_path / "run")
    model = api.build_model(cfg, vocab_size=40)
    opt = api.build.build_optimization(cfg, model)[0](model)
    assert type(opt) is torch.optim.RMSprop
    groups = {g["group"]: g for g in opt.param_groups}
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.01, 0.0)
    assert all(g["alpha"] == 0.95 and g["momentum"] == 0.5 and g["lr"] == 3e-3 for g in opt.param_groups)
    summary = api.train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["choices"]["optimizer"] == "rmsprop_plain" and math.isfinite(summary["final_val_loss"])


def test_an_override_of_the_target_trains(tmp_path):
    cfg = api.compose(
        [*TINY, "optimizer=sgd", "optimizer._target_=torch.optim.NAdam", "~optimizer.nesterov", "~optimizer.momentum"],
        run_dir=tmp_path / "run",
    )
    model = api.build_model(cfg, vocab_size=40)
    opt = api.build.build_optimization(cfg, model)[0](model)
    assert type(opt) is torch.optim.NAdam and opt.defaults["lr"] == cfg.optimizer.lr
    summary = api.train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and math.isfinite(summary["final_val_loss"])


def test_only_optimizer_classes_are_given_parameter_groups():
    assert F.for_model(functools.partial(F.adamw, lr=1e-3)).func is F.adamw  # a factory: unchanged
    built = F.for_model(functools.partial(torch.optim.Adam, lr=1e-3, betas=[0.8, 0.9]))
    assert built.func is F.from_class and built.args == (torch.optim.Adam,)
    opt = built(_model())
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)  # a config list arrives as a tuple
    assert F.for_model(torch.optim.SGD).func is F.from_class  # the bare class too

    class Mine(torch.optim.SGD):  # any subclass, wherever it lives and whatever its name
        pass

    class AdamWLike:  # a name like an optimizer's is not enough
        def __init__(self, model, lr=1e-3):
            self.model, self.lr = model, lr

    assert F.for_model(functools.partial(Mine, lr=0.1))(_model()).param_groups[0]["group"] == "decay"
    assert F.for_model(functools.partial(AdamWLike, lr=0.1)).func is AdamWLike


def test_weight_decay_goes_to_the_decay_group_with_the_class_default():
    model = _model()
    groups = {g["group"]: g for g in F.from_class(torch.optim.AdamW, model).param_groups}
    assert (groups["decay"]["weight_decay"], groups["no_decay"]["weight_decay"]) == (0.01, 0.0)  # AdamW's 1e-2
    assert all(p.ndim >= 2 for p in groups["decay"]["params"]) and all(p.ndim < 2 for p in groups["no_decay"]["params"])
    rprop = F.from_class(torch.optim.Rprop, model, lr=0.01)  # takes no weight_decay
    assert all("weight_decay" not in g for g in rprop.param_groups)
    with pytest.raises(ValueError, match=r"optimizer.weight_decay: torch.optim.rprop.Rprop takes no weight_decay"):
        F.from_class(torch.optim.Rprop, model, weight_decay=0.1)
    with pytest.raises(ValueError, match=r"optimizer.weight_decay=-1 must be a number >= 0"):
        F.from_class(torch.optim.AdamW, model, weight_decay=-1)


@pytest.mark.parametrize("build", [F.adamw, F.sgd, F.fam, functools.partial(F.from_class, torch.optim.RMSprop)])
def test_every_path_words_a_bad_lr_the_same_way(build):
    with pytest.raises(ValueError) as err:
        build(_model(), lr=-0.5)
    assert str(err.value) == "optimizer.lr must be positive, got -0.5"


def test_a_bad_lr_of_a_torch_class_is_one_line_before_training(tmp_path):
    overrides = [*TINY, "optimizer=sgd", "optimizer._target_=torch.optim.RMSprop", "~optimizer.nesterov"]
    with pytest.raises(ConfigError, match=r"^optimizer.lr must be positive, got 0$"):
        api.train(api.compose([*overrides, "optimizer.lr=0"], run_dir=tmp_path / "bad"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
