"""FAM's configuration: every out-of-range value is refused with one line naming its key; the table reaches the
groups; the matched-momentum option and its measuring script agree."""

import json

import pytest
import yaml

from famlab.model.transformer import TransformerLM
from famlab.optim import factories as F
from famlab.optim.fam_config import SEED_ANALYSIS, SEED_GROUPS


def _model():
    return TransformerLM(vocab_size=32, dims=16, layers=1, heads=2, context=8)


def _groups(**rows):
    return {k: {**v, **rows.get(k, {})} for k, v in SEED_GROUPS.items()}


def _analysis(handlers=None, **kw):
    table = {k: {**v, **(handlers or {}).get(k, {})} for k, v in SEED_ANALYSIS["handlers"].items()}
    return {**SEED_ANALYSIS, **kw, "handlers": table}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=-0.1), "optimizer.lr must be positive, got -0.1"),
        (dict(weight_decay=-1.0), "optimizer.weight_decay=-1.0 must be a number >= 0"),
        (dict(base="lion"), "optimizer.base='lion' must be one of ['sgd', 'adam']"),
        (
            dict(groups=_groups(attention={"alpha": 1.0})),
            "optimizer.groups.attention.alpha=1.0 must be a number in [0, 1)",
        ),
        (dict(groups=_groups(norm={"alpha": -0.1})), "optimizer.groups.norm.alpha=-0.1 must be"),
        (
            dict(groups=_groups(embedding={"lr_scale": 0.0})),
            "optimizer.groups.embedding.lr_scale=0.0 must be a number > 0",
        ),
        (dict(groups=_groups(default={"wd_scale": -1})), "optimizer.groups.default.wd_scale=-1 must be a number >= 0"),
        (dict(groups={**SEED_GROUPS, "mlp": SEED_GROUPS["default"]}), "optimizer.groups.mlp="),
        (dict(groups={k: v for k, v in SEED_GROUPS.items() if k != "conv"}), "'conv' is missing"),
        (dict(groups=_groups(conv={"momentum": 0.9})), "optimizer.groups.conv must have exactly the keys"),
        (dict(analysis=_analysis(beta=1.5)), "optimizer.analysis.beta=1.5 must be a number in [0, 1)"),
        (dict(analysis=_analysis(eps=0)), "optimizer.analysis.eps=0 must be a number > 0"),
        (dict(analysis=_analysis(fam_start_step=-1)), "optimizer.analysis.fam_start_step=-1 must be an integer >= 0"),
        (dict(analysis=_analysis(min_size=2.5)), "optimizer.analysis.min_size=2.5 must be an integer >= 0"),
        (dict(analysis=_analysis(seed=-3)), "optimizer.analysis.seed=-3 must be an integer >= 0"),
        (dict(analysis=_analysis(spectrum="wavelet")), "optimizer.analysis.spectrum='wavelet' must be one of"),
        (
            dict(analysis=_analysis(attention_layout="wide")),
            "optimizer.analysis.attention_layout='wide' must be one of",
        ),
        (
            dict(analysis=_analysis(window=8)),
            "optimizer.analysis.window applies to optimizer.analysis.spectrum=temporal",
        ),
        (
            dict(analysis=_analysis(spectrum="temporal", window=2)),
            "optimizer.analysis.window=2 must be an integer >= 4",
        ),
        (
            dict(analysis=_analysis({"norm": {"handler": "lion"}})),
            "optimizer.analysis.handlers.norm.handler='lion' must be one of",
        ),
        (
            dict(analysis=_analysis({"default": {"n_bands": 0}})),
            "optimizer.analysis.handlers.default.n_bands=0 must be an integer >= 1",
        ),
        (
            dict(analysis=_analysis({"attention": {"n_bands": 1}}, attention_layout="legacy")),
            "optimizer.analysis.handlers.attention.n_bands=1 must be an integer >= 2",
        ),
        (dict(analysis={**SEED_ANALYSIS, "alpha": 0.9}), "optimizer.analysis.alpha=0.9 must be absent"),
        (dict(beta2=0.9), "optimizer.beta2 applies to optimizer.base=adam only"),
        (dict(base="adam", beta2=1.0), "optimizer.beta2=1.0 must be a number in [0, 1)"),
        (dict(base="adam", adam_eps=0.0), "optimizer.adam_eps=0.0 must be a number > 0"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(kwargs, message):
    with pytest.raises(ValueError) as err:
        F.fam(_model(), **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_table_reaches_the_groups():
    table = _groups(attention={"alpha": 0.8, "lr_scale": 2.0, "wd_scale": 3.0})
    analysis = _analysis({"attention": {"handler": "default", "n_bands": 5}})
    opt = F.fam(_model(), lr=0.1, weight_decay=0.01, groups=table, analysis=analysis)
    g = {x["group"]: x for x in opt.param_groups}["attention"]
    assert (g["alpha"], g["lr"], g["weight_decay"], g["handler"], g["n_bands"]) == (0.8, 0.2, 0.03, "default", 5)
    assert opt.analysis and F.fam(_model(), analysis=None).analysis is False


def test_matched_momenta_script_prints_the_mean_alpha_eff(tmp_path, capsys):
    from importlib.util import module_from_spec, spec_from_file_location
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "matched_momenta.py"
    spec = spec_from_file_location("matched_momenta", path)
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"groups": SEED_GROUPS}}))
    records = [
        {"step": 50, "group": "default", "active": 0, "alpha_eff": 0.9},
        {"step": 110, "group": "default", "active": 3, "alpha_eff": 0.95},
        {"step": 120, "group": "default", "active": 3, "alpha_eff": 0.93},
        {"step": 110, "group": "attention", "active": 2, "alpha_eff": 0.87},
    ]
    (tmp_path / "fam_bands.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert mod.main([str(tmp_path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["groups"]
    assert printed["default"]["alpha"] == pytest.approx(0.94) and printed["attention"]["alpha"] == 0.87
    assert printed["embedding"] == SEED_GROUPS["embedding"]  # never active: the table's row
    assert mod.main([str(tmp_path / "missing")]) == 2
