"""MFU: the analytic FLOPs per token against hand computations, the peak table, the gpt2_small
preset on the meta device, and perf/mfu logged when (and only when) the device has a known peak."""

from __future__ import annotations

import csv

import pytest
import torch

import famlab.lit.module as lit_module
from famlab import api
from famlab.lit.mfu import device_peak_flops, flops_per_token, mfu, model_flops_per_token, peak_flops
from famlab_testing import TINY


def test_flops_per_token_is_six_per_parameter_plus_attention():
    # 6 * 1000 parameters + 12 * 2 layers * 64 dims * 32 tokens = 6000 + 49152
    assert flops_per_token(1000, layers=2, dims=64, seq_len=32) == 55152
    # GPT-2 small (nanoGPT's count without the position table): 6 * 123,653,376 + 12 * 12 * 768 * 1024
    assert flops_per_token(123_653_376, 12, 768, 1024) == 741_920_256 + 113_246_208


def test_model_flops_per_token_counts_unique_parameters_and_the_context():
    model = api.build_model(api.compose(TINY), vocab_size=40)
    n = sum(p.numel() for p in model.parameters())  # the tied head is counted once
    assert model_flops_per_token(model) == 6 * n + 12 * 2 * 64 * 64
    assert model_flops_per_token(model, seq_len=16) == 6 * n + 12 * 2 * 64 * 16


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("Tesla V100-SXM2-16GB", 125e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("Some Future GPU", None),
    ],
)
def test_peak_table_matches_device_names(name, peak):
    assert peak_flops(name) == peak


def test_no_peak_on_the_cpu():
    assert device_peak_flops(torch.device("cpu")) is None


def test_mfu_is_achieved_over_peak():
    assert mfu(6e8, 1e5, 1e15) == pytest.approx(0.06)


def test_gpt2_small_preset_composes_and_builds_on_the_meta_device():
    cfg = api.compose(["model=gpt2_small"])
    assert (cfg.model.layers, cfg.model.heads, cfg.model.dims, cfg.model.context) == (12, 12, 768, 1024)
    assert cfg.data.context == 1024
    with torch.device("meta"):
        model = api.build_model(cfg, vocab_size=50257)
    n = model.num_parameters()
    assert 120e6 < n < 126e6, n  # GPT-2 small is 124M with its 0.8M position table
    assert all(p.device.type == "meta" for p in model.parameters())


def test_perf_mfu_logged_when_the_device_has_a_known_peak(tmp_path, monkeypatch):
    """On the CPU no perf/mfu is logged; with a (pretended) GPU peak it is tokens/s x FLOPs/token / peak."""
    plain = api.train(api.compose(TINY, run_dir=tmp_path / "cpu"))
    assert plain["status"] == "completed"
    with open(tmp_path / "cpu" / "metrics.csv") as f:
        assert "perf/mfu" not in next(csv.reader(f))
    monkeypatch.setattr(lit_module, "device_peak_flops", lambda device: 1e9)
    api.train(api.compose(TINY, run_dir=tmp_path / "gpu"))
    with open(tmp_path / "gpu" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/mfu")]
    assert rows
    fpt = 6 * plain["n_parameters"] + 12 * 2 * 64 * 64  # tiny: 2 layers, 64 dims, context 64
    for r in rows:
        assert float(r["perf/mfu"]) == pytest.approx(fpt * float(r["perf/tokens_per_s"]) / 1e9, rel=1e-3)
