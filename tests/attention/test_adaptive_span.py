"""AdaptiveSpan: standard-attention limit, causality, caching, skipped keys, gradients, no host sync."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.attention.cache import KVCache
from famlab.attention.standard import StandardAttention
from famlab_testing import HostSyncCatcher

D, HEADS, T = 32, 4, 24


def make(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"max_dist": 16, "ramp": 4, "block": 8, "extent_round": 4, **kw}
    return AdaptiveSpan(D, HEADS, **kw).double()


def inputs(T=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, T, D, generator=g, dtype=torch.float64), torch.arange(T)


def set_span(mod, fractions):
    with torch.no_grad():
        mod.span_scale.copy_(torch.tensor(fractions, dtype=mod.span_scale.dtype))
    mod.post_step()


def test_full_span_with_ramp_beyond_context_equals_standard_attention():
    mod = make(max_dist=T, ramp=2 * T, init_span=1.0)
    ref = StandardAttention(D, HEADS).double()
    ref.load_state_dict({"qkv.weight": mod.qkv.weight, "proj.weight": mod.proj.weight})
    x, pos = inputs()
    torch.testing.assert_close(mod(x, pos), ref(x, pos))


def test_soft_mask_equals_multiply_and_renormalise():
    mod = make(init_span=0.3)  # z = 4.8 tokens, ramp 4
    mod.eval()
    x, pos = inputs()
    q, k, v = mod.project_qkv(x, pos)
    T_ = 1.0 + 0.01 * 0.7
    p = (q @ k.transpose(-2, -1)) / math.sqrt(mod.head_dim) / T_
    d = (pos[:, None] - pos[None, :]).double()
    p = p.masked_fill(d < 0, float("-inf")).softmax(-1)
    m = ((4 + 4.8 - d) / 4).clamp(0, 1) * (d >= 0)
    w = p * m
    w = w / w.sum(-1, keepdim=True)
    from famlab.attention.core import merge_heads

    torch.testing.assert_close(mod(x, pos), mod.proj(merge_heads(w @ v)))


def test_keys_beyond_span_are_skipped_and_do_not_matter():
    mod = make(init_span=0.25)  # z = 4 tokens + ramp 4 -> reach 8
    assert mod.extent == 8 < T
    x, pos = inputs()
    y = mod(x, pos)
    x2 = x.clone()
    x2[:, :4] += 10.0  # distance >= 9 from every query t >= 13
    torch.testing.assert_close(mod(x2, pos)[:, 13:], y[:, 13:])


@pytest.mark.parametrize("init_span", [0.2, 1.0])
def test_no_causal_leakage_full_and_cached(init_span):
    mod = make(init_span=init_span)
    x, pos = inputs()
    y = mod(x, pos)
    for t in (1, 11, 23):
        x2 = x.clone()
        x2[:, t:] = torch.randn_like(x2[:, t:])
        torch.testing.assert_close(mod(x2, pos)[:, :t], y[:, :t])
    cache = KVCache()  # decoding the perturbed sequence reproduces the clean prefix
    outs = [mod(x2[:, :3], pos[:3], cache)] + [mod(x2[:, i : i + 1], pos[i : i + 1], cache) for i in range(3, t)]
    torch.testing.assert_close(torch.cat(outs, 1), y[:, :t])


@pytest.mark.parametrize("prefill", [1, 9])
def test_cached_decoding_equals_full_forward(prefill):
    mod = make()
    set_span(mod, [0.1, 0.3, 0.5, 0.9])
    x, pos = inputs()
    full = mod(x, pos)
    cache = KVCache()
    outs = [mod(x[:, :prefill], pos[:prefill], cache)]
    outs += [mod(x[:, i : i + 1], pos[i : i + 1], cache) for i in range(prefill, T)]
    torch.testing.assert_close(torch.cat(outs, 1), full)


def test_gradient_reaches_span_scale_and_aux_loss():
    mod = make(init_span=0.3, span_penalty=0.01)
    x, pos = inputs()
    loss = mod(x, pos).pow(2).sum() + mod.aux_loss()
    loss.backward()
    assert mod.span_scale.grad is not None and (mod.span_scale.grad != 0).all()
    assert all(p.grad is not None for p in mod.parameters())
    torch.testing.assert_close(mod.aux_loss().detach(), torch.tensor(0.01 * 0.3 * 16, dtype=torch.float64))
    assert make(span_penalty=0.0).aux_loss() is None


def test_temperature_formulas():
    mod = make(init_span=0.5, temp_scale=0.2)
    torch.testing.assert_close(mod.temperature(), torch.full((HEADS,), 1.1, dtype=torch.float64))
    mod = make(init_span=0.5, temp_scale=0.2, sharpen=False)
    torch.testing.assert_close(mod.temperature(), torch.full((HEADS,), 0.6, dtype=torch.float64))


def test_post_step_clamps_and_refreshes_extent_and_load_refreshes():
    mod = make(init_span=0.25)
    with torch.no_grad():
        mod.span_scale.copy_(torch.tensor([1.5, -0.2, 0.5, 0.5]))
    mod.post_step(loss=torch.tensor(1.0))
    assert mod.span_scale.min() == 0 and mod.span_scale.max() == 1
    mod(*inputs())  # the forward after the step adopts the extent post_step copied to the host
    assert mod.extent == 16 + 4
    other = make(init_span=0.1)
    assert other.extent == 8  # ceil(1.6 + 4) rounded up to a multiple of 4
    other.load_state_dict(mod.state_dict())
    assert other.extent == mod.extent


def test_metrics_and_recorded_stats():
    mod = make(init_span=0.5)
    set_span(mod, [0.25, 0.5, 0.75, 1.0])
    mod.record_stats = True
    x, pos = inputs()
    mod(x, pos)
    m = mod.metrics()
    torch.testing.assert_close(m["span/mean"], torch.tensor(10.0, dtype=torch.float64))
    torch.testing.assert_close(m["span/max"], torch.tensor(16.0, dtype=torch.float64))
    assert not m["span/mean"].requires_grad
    assert torch.isfinite(m["attn/entropy"]) and 0 < m["attn/entropy"] < math.log(T)
    assert torch.isfinite(m["attn/max_logit"])


@pytest.mark.parametrize("record_stats", [False, True])  # fused CPU path / unfused path with stats
def test_training_forward_backward_has_no_host_sync(record_stats):
    mod = make(init_span=0.3, span_penalty=0.01).train()
    mod.record_stats = record_stats
    x, pos = inputs()
    with HostSyncCatcher():
        loss = mod(x, pos).sum() + mod.aux_loss()
        loss.backward()
        mod.metrics()


def test_config_instantiates_with_context_interpolation():
    node = OmegaConf.load("conf/attention/adaptive_span.yaml")
    cfg = OmegaConf.merge({"model": {"context": 64}}, {"attention": node})
    mod = instantiate(cfg.attention)(dims=D, head=HEADS, position=None)
    assert isinstance(mod, AdaptiveSpan) and mod.max_dist == 64


@pytest.mark.parametrize(
    "kw,key",
    [({"max_dist": 0}, "max_dist"), ({"ramp": 0}, "ramp"), ({"init_span": 1.5}, "init_span"), ({"block": 0}, "block")],
)
def test_bad_config_raises(kw, key):
    with pytest.raises(ValueError, match=key):
        AdaptiveSpan(D, HEADS, **kw)
