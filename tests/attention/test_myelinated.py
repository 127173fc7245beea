"""MyelinatedLayer: causality, per-token decisions, gradients, seeded noise, real skipping, no syncs."""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.attention.myelinated import MyelinatedLayer, decide_jump, prefix_mean
from famlab.model.transformer import TransformerLM
from famlab.sample import generate
from famlab_testing import HostSyncCatcher

D, H = 16, 2
CONF = Path(__file__).resolve().parents[2] / "conf" / "attention"


def layer(**kw) -> MyelinatedLayer:
    torch.manual_seed(0)
    return MyelinatedLayer(D, H, **kw)


def inputs(b=3, t=10, seed=1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D, generator=g), torch.arange(t)


def silence(m: MyelinatedLayer, i: int) -> None:
    """Make sub-layer ``i`` unimportant for every token (importance ~0)."""
    with torch.no_grad():
        m.node_predictors[i][1].weight.zero_()
        m.node_predictors[i][1].bias.fill_(-20.0)


@pytest.mark.parametrize("training", [False, True])
def test_no_causal_leak(training):
    m = layer(layerA=3).train(training)
    x, pos = inputs(t=12)
    y = x.clone()
    y[:, 7:] = torch.randn(3, 5, D)
    m.set_extra_state({"draws": 0, "seed": 0})
    out_x = m(x, pos)
    m.set_extra_state({"draws": 0, "seed": 0})  # same noise for both passes
    out_y = m(y, pos)
    torch.testing.assert_close(out_x[:, :7], out_y[:, :7])
    assert not torch.allclose(out_x[:, 7:], out_y[:, 7:])


def test_prefix_mean_continues_a_cached_sum():
    x = torch.randn(2, 9, 3)
    full, _ = prefix_mean(x)
    torch.testing.assert_close(full, x.cumsum(1) / torch.arange(1, 10)[:, None])
    head, s = prefix_mean(x[:, :4])
    tail, _ = prefix_mean(x[:, 4:], s, 4)
    torch.testing.assert_close(torch.cat([head, tail], 1), full)


def test_gradients_reach_every_decision_module():
    m = layer(layerA=3).train()
    x, pos = inputs(b=4, t=16)
    out = m(x, pos)
    assert m.last_jump.sum() > 0 and m.last_active.sum() > 0
    out.pow(2).sum().backward()
    named = dict(m.named_parameters())
    for name in [
        "policy_net.0.weight",
        "jump_weights",
        "memory_gate.weight",
        "working_memory",
        "mlp_gate.weight",
        *[f"node_predictors.{i}.1.weight" for i in range(3)],
        *[f"sublayers.{i}.gate.weight" for i in range(3)],
        "sublayers.0.adapter.weight",
        "sublayers.1.qkv.weight",
    ]:
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_every_parameter_is_in_the_graph_when_masking():
    """skip_compute='never' (the DDP-safe path): skipped sub-layers still get (zero) gradients."""
    m = layer(layerA=3, skip_compute="never").train()
    silence(m, 1)
    x, pos = inputs()
    m(x, pos).sum().backward()
    assert m.last_active[1].sum() == 0
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert missing == []


def test_decisions_are_per_sample():
    m = layer(layerA=3).eval()
    with torch.no_grad():  # importance of sub-layer 1 = sign of feature 0 after LayerNorm
        m.node_predictors[1][1].weight.zero_()
        m.node_predictors[1][1].weight[0, 0] = 50.0
        m.node_predictors[1][1].bias.zero_()
        m.policy_net[2].weight.zero_()  # no jumps: every token visits every sub-layer
    x, pos = inputs(b=2)
    x[0, :, 0], x[1, :, 0] = 5.0, -5.0
    out = m(x, pos)
    assert m.last_active[1, 0].all() and not m.last_active[1, 1].any()
    torch.testing.assert_close(out[1:], m(x[1:], pos))  # a sample's result ignores the rest of the batch
    torch.testing.assert_close(out[:1], m(x[:1], pos))


def test_eval_is_deterministic_and_training_noise_is_seeded():
    x, pos = inputs()
    m = layer().eval()
    torch.testing.assert_close(m(x, pos), m(x, pos))
    a, b, c = layer(seed=3).train(), layer(seed=3).train(), layer(seed=4).train()
    outs = [m_(x, pos) for m_ in (a, b, c)]
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])
    assert not torch.allclose(a(x, pos), outs[0])  # the generator advanced


def test_noise_state_survives_state_dict_round_trip():
    x, pos = inputs()
    m = layer(seed=5).train()
    for _ in range(3):
        m(x, pos)
    fresh = MyelinatedLayer(D, H, seed=0).train()
    fresh.load_state_dict(copy.deepcopy(m.state_dict()))
    assert fresh.get_extra_state() == {"draws": 3, "seed": 5}
    torch.testing.assert_close(fresh(x, pos), m(x, pos))


def test_whole_batch_skip_does_not_call_the_sublayer_in_eval():
    m = layer(layerA=3).eval()
    silence(m, 1)
    calls = [0, 0, 0]
    for i, sub in enumerate(m.sublayers):
        sub.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    x, pos = inputs()
    out = m(x, pos)
    assert calls == [1, 0, 1]
    masked = copy.deepcopy(m)
    masked.skip_compute = "never"
    torch.testing.assert_close(out, masked(x, pos))  # skipping changes cost, not values
    assert calls == [2, 1, 2]


@pytest.mark.parametrize("mode", ["never", "eval", "batch"])
def test_host_syncs_in_training_forward(mode):
    m = layer(layerA=3, skip_compute=mode).train()
    x, pos = inputs()
    with HostSyncCatcher(fail=False) as catcher:
        m(x, pos)
    if mode == "batch":  # world size 1: one read per sub-layer is allowed (and proves the catcher works)
        assert catcher.syncs == 3
    else:
        assert catcher.syncs == 0


def lm(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(23, D, 2, H, 32, attention=partial(MyelinatedLayer, **kw)).eval()


def test_cached_decoding_matches_full_forward():
    model = lm(layerA=4)
    silence(model.blocks[0].attn, 2)  # exercise real skipping while cached (keys still stored)
    idx = torch.randint(0, 23, (2, 14), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(5, 14)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert len(cache[0]) == 14 and len(cache[0].extra["myelin"]["kv"][2]) == 14


def test_greedy_generation_cached_equals_uncached():
    model = lm(layerA=3)
    prompt = torch.randint(0, 23, (2, 4), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 12, temperature=0.0, use_cache=True)
    uncached = generate(model, prompt, 12, temperature=0.0, use_cache=False)
    assert torch.equal(cached, uncached)


def test_jump_mix_is_convex_and_respects_the_last_sublayer():
    x, x0, wm = torch.randn(2, 5, D), torch.randn(2, 5, D), torch.randn(2, 5, D)
    log_pi = torch.log(torch.tensor([0.05, 0.9, 0.05])).expand(2, 5, 3)
    ones = torch.ones(2, 5, 1)
    out, jump, length = decide_jump(log_pi, torch.tensor([0.1, 0.05, 0.01]), 0, 3, x, x0, wm, decider=ones)
    assert jump.eq(1).all() and length[..., 1].eq(1).all()  # argmax of pi picks length 2 in eval
    torch.testing.assert_close(out, 0.5 * (x + 0.05 * x0 + 0.95 * wm))
    bound = torch.stack([x.norm(dim=-1), x0.norm(dim=-1), wm.norm(dim=-1)]).amax(0)
    assert (out.norm(dim=-1) <= bound + 1e-5).all()
    last, jump_last, _ = decide_jump(log_pi, torch.ones(3), 2, 3, x, x0, wm, decider=ones)
    assert torch.equal(last, x) and jump_last.eq(0).all()


def test_metrics_are_accumulated_detached_means():
    m = layer(layerA=3).train()
    silence(m, 2)
    x, pos = inputs()
    m(x, pos), m(x, pos)
    out = m.metrics()
    assert set(out) >= {"skip/rate_0", "skip/rate_1", "skip/rate_2", "skip/jump_rate", "skip/memory_gate"}
    assert all(not v.requires_grad for v in out.values())
    assert out["skip/rate_2"] == 1.0 and 0.0 < out["skip/jump_rate"] < 1.0
    assert "skip/rate_0" not in m.metrics()  # reset after reading
    m.record_stats = True  # what TransformerLM.set_record_stats sets: reaches every sub-layer
    m(x, pos)
    assert {"attn/entropy_s0", "attn/max_logit_s1"} <= set(m.metrics())  # s2 was skipped


def test_config_builds_layer_and_rejects_bad_values():
    cfg = OmegaConf.create({"model": {"context": 32}, "seed": 7, "attention": OmegaConf.load(CONF / "myelinated.yaml")})
    m = instantiate(cfg.attention)(dims=D, head=H, position=None)
    assert isinstance(m, MyelinatedLayer) and m.seed == 7 and m.sublayers[0].max_dist == 32
    with pytest.raises(ValueError, match="attention.skip_compute"):
        MyelinatedLayer(D, H, skip_compute="sometimes")
    with pytest.raises(ValueError, match="attention.layerA"):
        MyelinatedLayer(D, H, layerA=0)
