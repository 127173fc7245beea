"""FlexAttention backend of integrated/local_global against the blocked path, on CUDA (`make gpu-check`).

Expected on a GPU: forward within 2e-3 and every gradient (span predictor included, through the
captured span tensor) within 2e-3 relative of the blocked path, at two sequence lengths with the one
dynamic-shape compile; no output before position t changes when tokens after t change."""

from __future__ import annotations

import copy

import pytest
import torch

from famlab.attention.integrated import IntegratedAttention

pytestmark = pytest.mark.gpu
D, H = 64, 4


def pair(**kw):
    torch.manual_seed(0)
    flex = IntegratedAttention(D, H, 1024, 128, 96, 0.01, ramp=16, backend="flex", **kw).cuda().train()
    blocked = copy.deepcopy(flex)
    blocked.backend = "blocked"
    return flex, blocked


@pytest.mark.parametrize("T", [256, 384])
@pytest.mark.parametrize("global_branch", ["summary", "full"])
def test_flex_matches_blocked_forward_and_gradients(T, global_branch):
    flex, blocked = pair(global_branch=global_branch)
    assert IntegratedAttention(D, H).backend == "auto"  # the default: flex on CUDA
    x = torch.randn(2, T, D, device="cuda", generator=torch.Generator("cuda").manual_seed(T))
    pos = torch.arange(T, device="cuda")
    outs, grads = [], []
    for mod in (flex, blocked):
        xi = x.clone().requires_grad_(True)
        y = mod(xi, pos)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in mod.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-3, rtol=2e-3)
    for a, b in zip(*grads):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    assert flex.span_pred.bias.grad.abs() > 0


def test_flex_is_causal():
    flex, _ = pair()
    flex.eval()
    T, cut = 256, 150
    x = torch.randn(1, T, D, device="cuda")
    x2 = x.clone()
    x2[:, cut:] = torch.randn_like(x2[:, cut:])
    pos = torch.arange(T, device="cuda")
    with torch.no_grad():
        a, b = flex(x, pos), flex(x2, pos)
    torch.testing.assert_close(a[:, :cut], b[:, :cut], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, cut:], b[:, cut:])
