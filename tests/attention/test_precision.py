"""Under bf16 autocast the span geometry and temperature of the local attention paths stay fp32."""

from __future__ import annotations

import pytest
import torch

import famlab.attention.local as local
from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.attention.integrated import IntegratedAttention

D, H, T = 32, 4, 96


def builders():
    return {
        "adaptive_span": lambda: AdaptiveSpan(D, H, T, ramp=32, block=32),
        "integrated": lambda: IntegratedAttention(D, H, 512, 64, 96, 0.01, ramp=16, backend="blocked"),
    }


@pytest.fixture
def seen(monkeypatch):
    """Records the dtype of every span/temperature handed to the fused and unfused kernels."""
    record = []
    fused, attend = local.fused_blocked_attention, local._attend

    def spy_fused(q, k, v, **kw):
        record.append(("fused", q.dtype, kw["span"].dtype, kw["temperature"].dtype))
        return fused(q, k, v, **kw)

    def spy_attend(q, k, v, dist, valid, span, ramp, temperature, *rest):
        record.append(("blocked", q.dtype, span.dtype, temperature.dtype))
        return attend(q, k, v, dist, valid, span, ramp, temperature, *rest)

    monkeypatch.setattr(local, "fused_blocked_attention", spy_fused)
    monkeypatch.setattr(local, "_attend", spy_attend)
    return record


@pytest.mark.parametrize("stats", [False, True])  # fused CPU kernel / unfused blocked path
@pytest.mark.parametrize("name", ["adaptive_span", "integrated"])
def test_span_and_temperature_stay_fp32_under_bf16_autocast(name, stats, seen):
    torch.manual_seed(0)
    mod = builders()[name]().train()
    mod.record_stats = stats
    x = torch.randn(2, T, D)
    pos = torch.arange(T)
    ref = mod(x, pos)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mod(x, pos)
        out.float().square().mean().backward()
    assert seen and all(q == torch.bfloat16 for _, q, _, _ in seen)  # the attention itself runs in bf16
    assert all(s == torch.float32 and t == torch.float32 for _, _, s, t in seen), seen
    assert {kind for kind, *_ in seen} == {"blocked" if stats else "fused"}
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    grads = [p.grad for p in ([mod.span_scale] if name == "adaptive_span" else [mod.span_pred.bias])]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_span_temperature_resolution_is_not_bf16():
    """Spans and temperatures as the module computes them under autocast (no bf16 rounding)."""
    mod = AdaptiveSpan(D, H, 1024, temp_scale=0.01)
    with torch.no_grad():
        mod.span_scale.copy_(torch.tensor([0.3001, 0.3002, 0.9, 0.95]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spans, temp = mod.spans(), mod.temperature()
    assert spans.dtype == temp.dtype == torch.float32
    assert spans[1] - spans[0] > 0.05 and temp[2] != temp[3]  # bf16 would merge both pairs
    q = torch.zeros(1, H, 4, 8, dtype=torch.bfloat16)
    assert local._per_query(spans.view(1, -1, 1), q).dtype == torch.float32
