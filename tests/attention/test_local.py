"""Blocked local attention equals its dense masked-SDPA reference, is causal and differentiable."""

import math

import pytest
import torch
import torch.nn.functional as F

from famlab.attention.local import blocked_attention, dense_local_attention, slide_win
from famlab.attention.local import flex_sliding_window_attention as flex_slide_win

B, H, HD = 2, 3, 8


def qkv(T, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, HD, generator=g, dtype=dtype) for _ in range(3)]


def band_mask(T, window):
    i = torch.arange(T)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d < window)


def ramp_bias(T, span, ramp):
    """Causal additive ``log m`` bias ``[B|1, H|1, T, T]`` of the soft span (reference formula)."""
    i = torch.arange(T, dtype=torch.float64)
    d = i[:, None] - i[None, :]
    m = ((ramp + span[..., None] - d) / ramp).clamp(0, 1)
    return torch.where((m > 0) & (d >= 0), torch.log(m.clamp_min(1e-300)), float("-inf"))


@pytest.mark.parametrize("T,window", [(37, 1), (37, 4), (37, 7), (40, 8), (37, 37), (20, 64)])
def test_slide_win_equals_band_masked_sdpa(T, window):
    q, k, v = qkv(T)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=band_mask(T, window))
    torch.testing.assert_close(slide_win(q, k, v, window), ref)


@pytest.mark.parametrize("T,window", [(37, 5), (32, 8), (19, 40)])
def test_slide_win_with_soft_span_and_temperature_equals_sdpa(T, window):
    q, k, v = qkv(T, seed=1)
    g = torch.Generator().manual_seed(2)
    span = torch.rand(B, 1, T, generator=g, dtype=torch.float64) * 6  # per query, as IntegratedAttention
    temp = 1 + torch.rand(B, 1, T, generator=g, dtype=torch.float64)
    bias = ramp_bias(T, span, 2.0).masked_fill(~band_mask(T, window), float("-inf"))
    ref = F.scaled_dot_product_attention(q / temp[..., None], k, v, attn_mask=bias)
    torch.testing.assert_close(slide_win(q, k, v, window, span=span, ramp=2.0, temperature=temp), ref)


@pytest.mark.parametrize("block,lookback", [(4, 9), (5, 12), (8, 40), (64, 0)])
def test_blocked_per_head_span_equals_dense(block, lookback):
    T = 29
    q, k, v = qkv(T, seed=3)
    span = torch.tensor([1.0, 3.5, 6.0], dtype=torch.float64).view(1, H, 1)  # reach <= 6 + 3 = 9
    out = blocked_attention(q, k, v, block=block, lookback=lookback, span=span, ramp=3.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ramp_bias(T, span, 3.0))
    torch.testing.assert_close(out, ref)


def test_keys_beyond_lookback_are_not_read():
    T, lookback = 24, 5
    q, k, v = qkv(T, seed=4)
    out = blocked_attention(q, k, v, block=4, lookback=lookback)
    k2, v2 = k.clone(), v.clone()
    k2[..., :10, :] += 100.0  # distance > lookback for every query >= 16
    v2[..., :10, :] += 100.0
    out2 = blocked_attention(q, k2, v2, block=4, lookback=lookback)
    torch.testing.assert_close(out[..., 16:, :], out2[..., 16:, :])


@pytest.mark.parametrize("window", [3, 8])
def test_slide_win_is_causal(window):
    T = 21
    q, k, v = qkv(T, seed=5)
    out = slide_win(q, k, v, window)
    for t in (0, 9, 20):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[..., t:, :] = torch.randn_like(x[..., t:, :])
        torch.testing.assert_close(slide_win(q2, k2, v2, window)[..., :t, :], out[..., :t, :])


def test_gradients_match_dense_for_span_and_temperature():
    T, window = 18, 6
    base = qkv(T, seed=6)
    grads = []
    for fn in ("blocked", "dense"):
        q, k, v = (x.clone().requires_grad_() for x in base)
        span = torch.full((1, H, 1), 2.5, dtype=torch.float64, requires_grad=True)
        temp = torch.full((1, H, 1), 1.3, dtype=torch.float64, requires_grad=True)
        if fn == "blocked":
            out = slide_win(q, k, v, window, span=span, ramp=2.0, temperature=temp)
        else:
            pos = torch.arange(T)
            out = dense_local_attention(q, k, v, pos, pos, window=window, span=span, ramp=2.0, temperature=temp)
        (out * torch.linspace(-1, 1, HD, dtype=torch.float64)).sum().backward()
        grads.append([q.grad, k.grad, span.grad, temp.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert grads[0][2].abs().sum() > 0 and grads[0][3].abs().sum() > 0


def test_stats_match_dense_probabilities():
    T, window = 16, 5
    q, k, v = qkv(T, seed=7)
    _, (entropy, max_logit) = slide_win(q, k, v, window, return_stats=True)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(HD)
    scores = scores.masked_fill(~band_mask(T, window), float("-inf"))
    p = scores.softmax(-1)
    ref_entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
    torch.testing.assert_close(entropy, ref_entropy)
    torch.testing.assert_close(max_logit, scores.amax())


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_matches_blocked_on_cpu():
    T, window = 40, 7
    q, k, v = (x.float() for x in qkv(T, seed=8))
    span = torch.rand(B, 1, T, generator=torch.Generator().manual_seed(9)) * 5
    temp = torch.full((1, H, 1), 1.2)
    with torch.no_grad():
        ref = slide_win(q, k, v, window, span=span, ramp=2.0, temperature=temp)
        out = flex_slide_win(q, k, v, window, span=span, ramp=2.0, temperature=temp, compile=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="window"):
        slide_win(q, k, v, 0)
    with pytest.raises(ValueError, match="lookback"):
        blocked_attention(q, k, v, block=4, lookback=-1)


@pytest.mark.parametrize(
    "block,lookback,window,kind",
    [
        (4, 9, None, "head"),
        (5, 12, None, "query"),
        (6, 5, 6, "query"),
        (8, 40, None, "head"),
        (64, 0, None, "query"),
        (3, 8, None, "sequence"),
        (4, 3, 4, "none"),
    ],
)
def test_fused_path_equals_unfused_values_and_gradients(block, lookback, window, kind):
    """The fused CPU path (flash kernel + band-only span gradient) matches the unfused one."""
    T = 23
    base = qkv(T, seed=10)
    g = torch.Generator().manual_seed(11)
    span0 = {
        "query": 1.0 + torch.rand(B, 1, T, generator=g, dtype=torch.float64) * 5,
        "head": torch.tensor([0.5, 3.0, 6.0], dtype=torch.float64).view(1, H, 1),
        "sequence": torch.tensor([2.2, 4.7], dtype=torch.float64).view(B, 1, 1),
        "none": None,
    }[kind]
    temp0 = 1 + torch.rand(1, H, 1, generator=g, dtype=torch.float64)
    w = torch.randn(B, H, T, HD, generator=g, dtype=torch.float64)
    results = []
    for fused in (True, False):
        q, k, v = (x.clone().requires_grad_() for x in base)
        span = None if span0 is None else span0.clone().requires_grad_()
        temp = temp0.clone().requires_grad_()
        out = blocked_attention(
            q, k, v, block=block, lookback=lookback, window=window, span=span, ramp=3.0, temperature=temp, fused=fused
        )
        (out * w).sum().backward()
        results.append([out, q.grad, k.grad, v.grad, temp.grad] + ([] if span is None else [span.grad]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    if span0 is not None:
        assert results[0][-1].abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
def test_bfloat16_inputs_match_float32_reference(fused):
    """Distances stay exact past 256 tokens (computed in float32) and both paths accept bf16."""
    T = 300
    q, k, v = (x.float() for x in qkv(T, seed=12))
    span = torch.tensor([20.0, 150.0, 280.0]).view(1, H, 1)
    pos = torch.arange(T)
    ref = dense_local_attention(q, k, v, pos, pos, span=span, ramp=4.0)
    out = blocked_attention(
        q.bfloat16(), k.bfloat16(), v.bfloat16(), block=32, lookback=288, span=span, ramp=4.0, fused=fused
    )
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)
