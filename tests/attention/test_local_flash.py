"""Per-query span gradient of the fused CPU path (sub-window GEMMs + whole-window redo) is exact."""

import pytest
import torch

from famlab.attention.local import blocked_attention

B, H, HD, T = 2, 3, 8, 70


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v, w = (torch.randn(B, H, T, HD, generator=g, dtype=torch.float64) for _ in range(4))
    return q, k, v, w, g


def _spans(kind, g):
    t = torch.arange(T, dtype=torch.float64)
    if kind == "smooth":  # slowly varying, like IntegratedAttention's running mean: every block fits its sub-window
        return 4.0 + 6.0 * torch.sin(t / 23.0) ** 2 + 0.3 * torch.rand(B, 1, T, generator=g, dtype=torch.float64)
    if kind == "jumps":  # alternates 0.4 / ~28 tokens: bands leave the sub-window, blocks are redone whole
        return torch.where(t % 3 == 0, 0.4, 27.5) + torch.rand(B, 1, T, generator=g, dtype=torch.float64)
    # per head and query, some beyond the window (band outside it: zero gradient)
    return torch.rand(B, H, T, generator=g, dtype=torch.float64) * 40.0


@pytest.mark.parametrize("kind", ["smooth", "jumps", "per_head"])
@pytest.mark.parametrize("block,lookback,window", [(8, 34, None), (16, 19, 20), (5, 33, 30)])
def test_fused_span_gradient_equals_unfused(kind, block, lookback, window):
    q0, k0, v0, w, g = _inputs(seed=block + {"smooth": 0, "jumps": 100, "per_head": 200}[kind])
    span0 = _spans(kind, g)
    temp0 = 1 + torch.rand(B, 1, T, generator=g, dtype=torch.float64)
    results = []
    for fused in (True, False):
        q, k, v, span, temp = (x.clone().requires_grad_() for x in (q0, k0, v0, span0, temp0))
        out = blocked_attention(
            q, k, v, block=block, lookback=lookback, window=window, span=span, ramp=3.0, temperature=temp, fused=fused
        )
        (out * w).sum().backward()
        results.append([out, q.grad, k.grad, v.grad, temp.grad, span.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert (results[0][-1] != 0).sum() > T // 2  # exercised (zero only where the band lies outside the window)


def test_fused_span_gradient_float32_long_sequence():
    """float32, T not a multiple of the block, span starting beyond the first keys (as at sequence start)."""
    g = torch.Generator().manual_seed(3)
    n = 301
    q0, k0, v0 = (torch.randn(1, 2, n, 16, generator=g) for _ in range(3))
    span0 = 20.0 + 60.0 * torch.rand(1, 1, n, generator=g).cumsum(-1) / torch.arange(1, n + 1)
    grads = []
    for fused in (True, False):
        q, k, v, span = (x.clone().requires_grad_() for x in (q0, k0, v0, span0))
        out = blocked_attention(q, k, v, block=64, lookback=63, window=64, span=span, ramp=8.0, fused=fused)
        out.pow(2).sum().backward()
        grads.append([out, q.grad, k.grad, v.grad, span.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
