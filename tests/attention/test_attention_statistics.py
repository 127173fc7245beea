"""The causal attention statistics computed in place give what ``attention_stats`` gives with an
explicit causal mask: the same entropy and largest logit, bit for bit, NaN and infinities included."""

from __future__ import annotations

import math

import pytest
import torch

from famlab.attention.core import attention_stats, causal_attention_stats_
from famlab.attention.standard import StandardAttention


def _reference(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    tq, tk = scores.shape[-2:]
    return attention_stats(scores.float(), torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.isnan(a) and torch.isnan(b)) or a.item() == b.item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["plain", "nan_key", "huge_key", "inf_query"])
@pytest.mark.parametrize("tq, tk", [(1, 1), (7, 7), (5, 12), (33, 40)])
def test_in_place_causal_stats_match_the_masked_reference(dtype, case, tq, tk):
    g = torch.Generator().manual_seed(tq * 100 + tk)
    q = (torch.randn(2, 3, tq, 16, generator=g) * 4).to(dtype)
    k = torch.randn(2, 3, tk, 16, generator=g).to(dtype)
    if case == "nan_key":
        k[0, 0, -1, 0] = float("nan")  # a key only the last queries see
    elif case == "huge_key":
        k[0, 1, -1, :] = 1e30  # logits that overflow to +inf
    elif case == "inf_query":
        q[1, 2, 0, :] = float("inf")
    expected = _reference(q, k)
    scores = (q @ k.transpose(-2, -1)).div_(math.sqrt(q.shape[-1])).float()
    got = causal_attention_stats_(scores)
    for name, a, b in zip(("entropy", "max_logit"), expected, got):
        assert _same(a, b), (name, a, b)


def test_recorded_stats_are_the_reference_values():
    torch.manual_seed(0)
    attn = StandardAttention(dims=32, head=4)
    x = torch.randn(3, 10, 32)
    attn.record_stats = True
    attn(x, torch.arange(10))
    stats = attn.metrics()
    q, k, _ = attn.project_qkv(x, torch.arange(10))
    entropy, max_logit = _reference(q.detach(), k.detach())
    assert stats["attn/entropy"].item() == entropy.item() and stats["attn/max_logit"].item() == max_logit.item()
    assert 0 < stats["attn/entropy"].item() < math.log(10)
