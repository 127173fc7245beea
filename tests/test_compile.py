"""The `compile` switch wraps the model in torch.compile (off by default)."""

from __future__ import annotations

import torch

from famlab import api
from famlab_testing import TINY


def test_compile_switch_wraps_the_model(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(model, **kwargs):  # record and return the model: compiling is slow on a CPU
        compiled.append(type(model).__name__)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    summary = api.train(api.compose([*TINY, "compile=true", "trainer.max_steps=3"], run_dir=tmp_path / "c"))
    assert compiled == ["TransformerLM"] and summary["status"] == "completed"
    assert api.compose([]).compile is False
