"""FAMOptimizer(debug=True) writes a JSON Lines trace without Lightning."""

import json

import torch
from torch import nn

from famlab.optim.fam import FAMOptimizer


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 48), nn.Tanh(), nn.Linear(48, 24))


def test_debug_jsonl_records_every_n_steps_and_flushes(tmp_path):
    model = _model()
    opt = FAMOptimizer(
        [
            {
                "params": list(model[0].parameters()),
                "handler": "attention",
                "group": "attn",
                "n_bands": 12,
                "names": ["w0", "b0"],
            },
            {"params": list(model[2].parameters()), "group": "out"},
        ],
        fam_start_step=1,
        min_size=100,
        debug=True,
        debug_dir=str(tmp_path),
        debug_interval=4,
        debug_every=2,
    )
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(4, 24)).square().mean().backward()
        opt.step()
    opt.flush_debug()
    (path,) = tmp_path.glob("fam_debug_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["step"] for r in rows} == {2, 4} and {r["name"] for r in rows} == {"w0", "out.0"}
    assert all(set(r) == {"step", "name", "group", "handler", "alpha_eff", "bands"} for r in rows)
    assert len(next(r for r in rows if r["group"] == "attn")["bands"]) == 12
    assert json.loads(path.with_suffix(".settings.json").read_text())["settings"]["fam_start_step"] == 1


def test_debug_flushes_on_interval_without_explicit_call(tmp_path):
    p = nn.Parameter(torch.zeros(300))
    opt = FAMOptimizer(
        [p], fam_start_step=0, min_size=100, debug=True, debug_dir=str(tmp_path), debug_interval=3, debug_every=1
    )
    for step in range(4):
        p.grad = torch.randn(300)
        opt.step()
    (path,) = tmp_path.glob("fam_debug_*.jsonl")
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]  # flushed at step 3
