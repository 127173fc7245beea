"""Block-summary attention: block means, the complete-block mask, the own-key fallback, gradients."""
import torch

from famlab.attention.summary import block_means, complete_blocks, summary_attention


def test_block_means_drop_the_incomplete_tail():
    t = torch.arange(10.0).view(1, 1, 10, 1).expand(1, 2, 10, 3)
    means = block_means(t, 4)
    assert means.shape == (1, 2, 2, 3)
    torch.testing.assert_close(means[0, 0, :, 0], torch.tensor([1.5, 5.5]))
    assert block_means(t, 11).shape == (1, 2, 0, 3)


def test_complete_blocks_mask_is_strictly_causal():
    mask = complete_blocks(torch.arange(9), 3, 3)
    expected = torch.tensor([[i >= 3 * (b + 1) - 1 for b in range(3)] for i in range(9)])
    assert torch.equal(mask, expected)
    assert not mask[:2].any() and mask[2, 0] and not mask[4, 1] and mask[5, 1]


def test_no_complete_block_returns_the_own_value_and_offsets_shift_the_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    empty = k[:, :, :0]
    torch.testing.assert_close(summary_attention(q, k, v, empty, empty, torch.arange(5), 8), v)
    # decoding offset: the same queries at indices 8..12 see both summaries of blocks [0, 4), [4, 8)
    k_sum, v_sum = (torch.randn(1, 2, 2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    out, (entropy, max_logit) = summary_attention(q, k, v, k_sum, v_sum, torch.arange(8, 13), 4, return_stats=True)
    scores = torch.cat([q @ k_sum.transpose(-2, -1), (q * k).sum(-1, keepdim=True)], -1) / 2.0
    probs = scores.softmax(-1)
    torch.testing.assert_close(out, probs[..., :2] @ v_sum + probs[..., 2:] * v)
    assert 0 < entropy <= torch.log(torch.tensor(3.0)) and torch.isfinite(max_logit)


def test_gradients_reach_queries_keys_values_and_summaries():
    q, k, v, k_sum, v_sum = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(5))
    summary_attention(q, k, v, k_sum[:, :, :2], v_sum[:, :, :2], torch.arange(6), 3).pow(2).sum().backward()
    for t in (q, k, v):
        assert t.grad.abs().sum() > 0
    assert k_sum.grad[:, :, :2].abs().sum() > 0 and v_sum.grad[:, :, :2].abs().sum() > 0
