"""Spans learn through the mask at every shipped context; the span penalty acts; no host reads."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

import famlab  # noqa: F401  (registers the famlab.min resolver used by the configs)
from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.model.transformer import TransformerLM
from famlab_testing import HostSyncCatcher, group_option

CONF = Path(__file__).resolve().parents[2] / "conf"
D, HEADS = 32, 4
# every model size's context, and claim_compute's
CONTEXTS = [OmegaConf.load(CONF / "model" / f"{m}.yaml").context for m in ("tiny", "small", "base")] + [1024]


def build(name: str, context: int, **overrides):
    node = group_option("attention", name)
    cfg = OmegaConf.merge({"model": {"context": context}, "seed": 0}, {"attention": node}, {"attention": overrides})
    torch.manual_seed(0)
    return instantiate(cfg.attention)(dims=D, head=HEADS, position=None)


def span_grads(name: str, context: int) -> list[torch.Tensor]:
    """Gradients of the span parameters after one fwd+bwd with temp_scale=0 (mask path only)."""
    mod = build(name, context, temp_scale=0.0).train()
    x = torch.randn(2, context, D, generator=torch.Generator().manual_seed(1))
    mod(x, torch.arange(context)).square().mean().backward()
    if isinstance(mod, AdaptiveSpan):
        return [mod.span_scale.grad]
    return [mod.span_pred.weight.grad, mod.span_pred.bias.grad]


def test_the_contexts_are_the_shipped_ones():
    assert CONTEXTS == [64, 128, 256, 1024]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("name", ["adaptive_span", "integrated", "local_global"])
def test_span_parameters_get_a_gradient_through_the_mask(name, context):
    grads = span_grads(name, context)
    assert all(g is not None for g in grads)
    if name == "adaptive_span":
        assert (grads[0].abs() > 0).all(), grads[0]  # every head
    else:
        assert grads[1].abs() > 0 and grads[0].abs().sum() > 0


@pytest.mark.parametrize("context", CONTEXTS)
def test_default_span_starts_with_its_ramp_ending_at_the_context(context):
    mod = build("adaptive_span", context)
    torch.testing.assert_close(mod.spans(), torch.full((HEADS,), float(context - 32)))
    assert mod.extent == context  # nothing skipped at the start, every key weighted >= 1/ramp


def test_span_penalty_is_per_token_of_mean_span():
    mod = AdaptiveSpan(D, HEADS, 128, span_penalty=2e-6)
    mod.aux_loss().backward()
    # d(2e-6 * mean_h 128 * s_h) / d s_h = 2e-6 * 128 / HEADS: the adaptive-span paper's per-token L1
    torch.testing.assert_close(mod.span_scale.grad, torch.full((HEADS,), 2e-6 * 128 / HEADS))
    assert build("adaptive_span", 64).aux_loss() is None  # shipped default: no penalty


def test_with_the_penalty_the_extent_falls_below_the_context():
    """AdamW on the penalty alone (the LM loss adds a gradient of either sign): the extent shrinks
    below the context within a few hundred steps at the paper's 2e-6."""
    mod = AdaptiveSpan(D, HEADS, 1024, span_penalty=2e-6)
    opt = torch.optim.AdamW([mod.span_scale], lr=1e-3, weight_decay=0.0)
    x = torch.randn(1, 8, D)
    assert mod.extent == 1024
    for _ in range(100):
        opt.zero_grad()
        mod.aux_loss().backward()
        opt.step()
        mod.post_step()
    mod(x, torch.arange(8))  # the next forward adopts the extent
    assert mod.extent < 1024 and mod.spans().max() < 1024 - 64


def lm(context=64):
    attention = partial(AdaptiveSpan, max_dist=context, span_penalty=2e-6, block=16)
    torch.manual_seed(0)
    return TransformerLM(vocab_size=31, dims=D, layers=2, heads=HEADS, context=context, attention=attention)


def test_training_step_and_cached_decoding_read_nothing_back():
    model = lm()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 31, (2, 65), generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        with HostSyncCatcher() as catcher:
            loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
            (loss + model.aux_loss()).backward()
        opt.step()  # torch's own AdamW reads its step count; the optimizers are tested elsewhere
        opt.zero_grad()
        with HostSyncCatcher() as post:
            model.post_step(loss.detach())
        assert catcher.syncs == 0 and post.syncs == 0
    model.eval()
    with torch.no_grad():
        cache = model.new_cache()
        model(idx[:, :8], cache=cache)
        with HostSyncCatcher() as catcher:
            for t in range(8, 12):
                model(idx[:, t : t + 1], cache=cache)
        assert catcher.syncs == 0
        spans = [b.attn.spans() for b in model.blocks]
        assert all(b.attn.extent >= s.max() + b.attn.ramp for b, s in zip(model.blocks, spans))


def test_a_stale_extent_caps_the_span_so_the_result_is_exact():
    """Before the copied extent lands, spans beyond it are capped: the output equals dense local
    attention with the capped spans (no key with m > 0 is silently dropped)."""
    from famlab.attention.local import dense_local_attention

    mod = AdaptiveSpan(D, HEADS, 64, ramp=8, init_span=0.25, block=8, extent_round=8).double().eval()
    assert mod.extent == 24
    with torch.no_grad():
        mod.span_scale.fill_(0.75)  # 48 tokens: needs 56 keys, the extent still says 24
    mod._reach_pending = False  # as if the copy had not landed yet
    x = torch.randn(2, 64, D, dtype=torch.float64)
    pos = torch.arange(64)
    q, k, v = mod.project_qkv(x, pos)
    span = torch.full((1, HEADS, 1), 16.0, dtype=torch.float64)
    ref = dense_local_attention(q, k, v, pos, pos, span=span, ramp=8.0, temperature=mod.temperature().view(1, -1, 1))
    torch.testing.assert_close(mod(x, pos), mod.out(ref))
