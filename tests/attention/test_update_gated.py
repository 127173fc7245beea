"""UpdateGatedAttention: standard in training, trainable predictors, update-gated KV cache."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.attention.cache import KVCache
from famlab.attention.standard import StandardAttention
from famlab.attention.update_gated import UpdateGatedAttention
from famlab.model.transformer import TransformerLM
from famlab.sample import generate

D, H = 16, 2
CONF = Path(__file__).resolve().parents[2] / "conf" / "attention"


def gated(**kw) -> UpdateGatedAttention:
    torch.manual_seed(0)
    return UpdateGatedAttention(D, H, **kw)


def test_training_forward_is_standard_attention():
    m = gated().train()
    ref = StandardAttention(D, H)
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if k.startswith(("qkv", "proj"))})
    x, pos = torch.randn(2, 9, D), torch.arange(9)
    torch.testing.assert_close(m(x, pos), ref(x, pos))


def test_no_causal_leak_in_training():
    m = gated().train()
    x, pos = torch.randn(2, 9, D), torch.arange(9)
    y = x.clone()
    y[:, 5:] += 1.0
    torch.testing.assert_close(m(x, pos)[:, :5], m(y, pos)[:, :5])


def test_predictors_learn_through_the_straight_through_gate_and_the_cost():
    m = gated().train()
    x, pos = torch.randn(2, 9, D), torch.arange(9)
    m(x, pos).pow(2).sum().backward()  # task signal alone reaches both predictors
    for pred in (m.gates.key_predictor, m.gates.value_predictor):
        assert pred[0].weight.grad is not None and pred[0].weight.grad.abs().sum() > 0
    m.zero_grad()
    m(x, pos)
    aux = m.aux_loss()
    assert aux is not None and aux.requires_grad
    aux.backward()
    assert m.gates.key_predictor[2].bias.grad > 0  # the cost pushes update probabilities down
    m.eval()
    m(x, pos)
    assert m.aux_loss() is None


def test_should_update_is_boolean_per_token_and_threshold_zero_takes_all():
    x = torch.randn(3, 7, D)
    assert gated(update_threshold=0.0).should_update_key(x).all()
    m = gated(update_threshold=0.5)
    uk = m.should_update_key(x)
    assert uk.dtype == torch.bool and uk.shape == (3, 7)
    assert torch.equal(uk, m.gates.key_prob(x) >= 0.5)


def test_skipped_updates_keep_the_low_precision_copy():
    m = gated(update_threshold=1.0).eval()  # probability < 1: every update is skipped
    cache = KVCache()
    x, pos = torch.randn(2, 6, D), torch.arange(6)
    with torch.no_grad():
        y = m(x, pos, cache)
        _, k, v = m.project_qkv(x, pos)
    torch.testing.assert_close(y, m(x, pos))  # the current step sees its own keys exactly
    assert torch.equal(cache.k, m.stale(k)) and torch.equal(cache.v, m.stale(v))
    assert not torch.equal(cache.k, k)
    assert cache.extra["skipped_updates"].item() == cache.extra["total_updates"].item() == 2 * 2 * 6


def lm(threshold: float) -> TransformerLM:
    torch.manual_seed(0)
    attention = partial(UpdateGatedAttention, update_threshold=threshold)
    return TransformerLM(23, D, 2, H, 32, attention=attention).eval()


def test_all_updates_taken_cached_generation_equals_uncached():
    model = lm(0.0)
    prompt = torch.randint(0, 23, (2, 4), generator=torch.Generator().manual_seed(0))
    stats: dict = {}
    cached = generate(model, prompt, 12, temperature=0.0, use_cache=True, stats=stats)
    assert torch.equal(cached, generate(model, prompt, 12, temperature=0.0, use_cache=False))
    assert isinstance(stats["skipped_updates"], torch.Tensor) and stats["skipped_updates"].item() == 0
    # prefill of 4 + 11 single steps = 15 positions, 2 layers, batch 2, key and value each
    assert stats["total_updates"].item() == 15 * 2 * 2 * 2


def test_cached_decoding_with_exact_updates_matches_full_forward():
    model = lm(0.0)
    idx = torch.randint(0, 23, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.new_cache()
        steps = [model(idx[:, :3], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(3, 10)]
        torch.testing.assert_close(torch.cat(steps, 1), model(idx), atol=1e-5, rtol=1e-5)


def test_metrics_report_update_rates():
    m = gated().train()
    m(torch.randn(2, 5, D), torch.arange(5))
    out = m.metrics()
    assert 0.0 <= out["update/key_rate"] <= 1.0 and not out["update/value_rate"].requires_grad


def test_config_builds_and_rejects_bad_values():
    factory = instantiate(OmegaConf.load(CONF / "update_gated.yaml"))
    m = factory(dims=D, head=H, position=None)
    assert isinstance(m, UpdateGatedAttention) and m.gates.update_threshold == 0.5
    with pytest.raises(ValueError, match="attention.cache_dtype"):
        UpdateGatedAttention(D, H, cache_dtype="int3")
    with pytest.raises(ValueError, match="attention.update_threshold"):
        UpdateGatedAttention(D, H, update_threshold=1.5)
