"""TransformerLM with every attention option: shapes, no causal leakage, cached decoding, hooks."""

from __future__ import annotations

import copy

import pytest
import torch

from famlab import api
from famlab_testing import TINY, options

ATTENTION = options("attention")


def _model(attention: str, position: str = "rotary", seed: int = 0, *extra: str):
    torch.manual_seed(seed)
    cfg = api.compose([*TINY, f"attention={attention}", f"position={position}", *extra])
    return api.build_model(cfg, vocab_size=50).eval()


@pytest.mark.parametrize("attention", ATTENTION)
def test_shapes_and_tied_head(attention):
    model = _model(attention)
    x = torch.randint(0, 50, (2, 24))
    assert model(x).shape == (2, 24, 50)
    assert model.head.weight is model.tok_emb.weight


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("train_mode", [False, True])
def test_no_causal_leak(attention, train_mode):
    """Changing a future token never changes the logits of earlier positions."""
    model = _model(attention)
    model.train(train_mode)
    x = torch.randint(0, 50, (2, 32))
    y = x.clone()
    y[:, 20:] = (y[:, 20:] + 7) % 50
    twin = copy.deepcopy(model)  # same parameters, buffers and noise counters: same stochastic choices
    state = torch.get_rng_state()
    a = model(x)
    torch.set_rng_state(state)
    b = twin(y)
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 20:], b[:, 20:])


@pytest.mark.parametrize("attention", ATTENTION)
def test_cached_decoding_equals_full_forward(attention):
    every_update = ["attention.update_threshold=0"] if attention == "update_gated" else []
    model = _model(attention, "rotary", 0, *every_update)
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache()
        steps = [model(x[:, :12], cache=cache)]
        for t in range(12, 20):
            steps.append(model(x[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)


def test_hooks_are_collected_per_layer():
    model = _model("standard")
    model.set_record_stats(True)
    model(torch.randint(0, 50, (1, 16)))
    metrics = model.metrics()
    assert {"attn/l0.entropy", "attn/l1.entropy", "attn/l0.max_logit"} <= set(metrics)
    assert 0 < float(metrics["attn/l0.entropy"]) <= float(torch.log(torch.tensor(16.0))) + 1e-4
    assert model.aux_loss() is None
