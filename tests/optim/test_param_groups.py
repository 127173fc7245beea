"""get_parameter_groups: module-type first, name fallback, each parameter exactly once, seed group table.

(Tests src/famlab/optim/groups.py; not named test_groups.py, which tests/report/ already uses.)
"""

import pytest
import torch
from torch import nn

from famlab.model.transformer import TransformerLM
from famlab.optim.groups import (
    GROUP_TABLE,
    add_handlers_to_groups,
    classify_by_name,
    format_group_table,
    get_parameter_groups,
)


def _by_name(groups):
    return {n: g for g in groups for n in g["names"]}


def test_transformer_lm_table(capsys):
    model = TransformerLM(vocab_size=32, dims=16, layers=2, heads=2, context=8)
    groups = get_parameter_groups(model, lr=1e-3, weight_decay=0.1)
    print(format_group_table(groups))
    out = capsys.readouterr().out
    assert "attention" in out and "embedding" in out
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # tied head/embedding counted once
    where = _by_name(groups)
    assert where["tok_emb.weight"]["group"] == "embedding"
    assert where["blocks.0.attn.qkv.weight"]["group"] == "attention"
    assert where["blocks.1.attn.proj.weight"]["handler"] == "attention"
    assert where["blocks.0.mlp.fc.weight"]["group"] == "default"  # the seed put it under "norm" via "layer"
    assert where["blocks.0.ln_1.bias"]["group"] == "norm" and where["ln_f.weight"]["group"] == "norm"
    g = {x["group"]: x for x in groups}
    assert g["embedding"]["lr"] == pytest.approx(0.8e-3) and g["embedding"]["weight_decay"] == pytest.approx(0.15)
    assert g["norm"]["weight_decay"] == 0.0 and g["norm"]["n_bands"] == 4
    assert (g["attention"]["alpha"], g["attention"]["n_bands"]) == (0.92, 12)
    assert all(len(x["names"]) == len(x["params"]) for x in groups)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)
        self.mha = nn.MultiheadAttention(8, 2)
        self.self_attn = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(8, 8), "c_attn": nn.Linear(8, 24)})])
        self.emb = nn.Embedding(10, 8)
        self.norm = nn.BatchNorm1d(8)
        self.layers = nn.ModuleList([nn.Linear(8, 8)])
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(()))


def test_module_type_then_name_fallback():
    model = Custom()
    groups = get_parameter_groups(model)
    where = {n: g["group"] for n, g in _by_name(groups).items()}
    assert where["conv.weight"] == "conv" and where["conv.bias"] == "norm"
    assert where["mha.in_proj_weight"] == "attention" and where["mha.out_proj.weight"] == "attention"
    assert where["self_attn.weight"] == "attention"
    assert where["blocks.0.q_proj.weight"] == "attention" and where["blocks.0.c_attn.weight"] == "attention"
    assert where["emb.weight"] == "embedding" and where["norm.weight"] == "norm" and where["scale"] == "norm"
    assert where["layers.0.weight"] == "default"
    assert not any(n.startswith("frozen") for n in where)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in trainable)
    assert [g["group"] for g in groups] == [k for k in GROUP_TABLE if k in {g["group"] for g in groups}]


@pytest.mark.parametrize(
    "name,group",
    [
        ("encoder.attn.c_proj.weight", "attention"),
        ("x.cross_attn.w", "attention"),
        ("wte.weight", "embedding"),
        ("conv1.weight", "conv"),
        ("h.0.ln_1.weight", "norm"),
        ("layers.3.mlp.w1", "default"),
    ],
)
def test_classify_by_name(name, group):
    assert classify_by_name(name) == group


def test_add_handlers_to_groups():
    p = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))]
    (g,) = add_handlers_to_groups(p)
    assert g["handler"] == "default" and g["names"] == ["group0.0", "group0.1"]
    groups = add_handlers_to_groups(
        [{"params": p[:1], "names": ["blk.attn.q"]}, {"params": p[1:], "names": ["tok_embed"]}, {"params": p[1:]}]
    )
    assert [x["handler"] for x in groups] == ["attention", "embedding", "default"]  # seed: always "attention"
    with pytest.raises(ValueError, match="names"):
        add_handlers_to_groups([{"params": p, "names": ["a"]}])


def test_single_grouping_puts_every_parameter_in_the_default_group():
    from famlab.optim.factories import fam

    model = TransformerLM(vocab_size=32, dims=16, layers=2, heads=2, context=8)
    per_type = fam(model, lr=0.5, weight_decay=0.1)
    single = fam(model, lr=0.5, weight_decay=0.1, grouping="single")
    assert len(per_type.param_groups) > 1
    (group,) = single.param_groups
    assert group["group"] == "default" and group["handler"] == "default" and group["n_bands"] == 8
    assert group["alpha"] == GROUP_TABLE["default"]["alpha"] and group["weight_decay"] == pytest.approx(0.1)
    assert len(group["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match=r"^optimizer.grouping='by_type' must be one of \['per_type', 'single'\]"):
        fam(model, grouping="by_type")


def test_param_handling_experiment_maps_each_arm_to_its_grouping(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from famlab.paths import CONF_DIR

    tuned = tmp_path / "tuned.yaml"
    tuned.write_text(
        "arm_key: handling\narms:\n"
        "  per_type: {lr: 0.3, grid: [0.1, 0.3, 1.0], at_edge: false}\n"
        "  uniform: {lr: 1.0, grid: [0.3, 1.0, 3.0], at_edge: false}\n"
    )
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for arm, grouping, lr in (("per_type", "per_type", 0.3), ("uniform", "single", 1.0)):
            cfg = compose(
                "train",
                overrides=[
                    "experiment=claim_param_handling_cpu",
                    f"handling={arm}",
                    f"experiment_meta.best_from={tuned}",
                ],
            )
            opt = OmegaConf.to_container(cfg.optimizer, resolve=True)
            assert opt["grouping"] == grouping and opt["lr"] == lr
