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


def test_rows_without_a_complete_block_are_zero_and_offsets_shift_the_mask():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64)
    k_sum, v_sum = (torch.randn(1, 2, 2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    out, (entropy, max_logit) = summary_attention(q, k_sum, v_sum, 0, 4, return_stats=True)
    assert (out[:, :, :3] == 0).all()  # indices 0..2: block [0, 4) not complete yet
    torch.testing.assert_close(out[:, :, 3:], v_sum[:, :, :1].expand(1, 2, 2, 4))  # only block 0: its value
    assert entropy == 0 and torch.isfinite(max_logit)
    # decoding offset: the same queries at indices 8..12 see both blocks [0, 4) and [4, 8)
    out, (entropy, _) = summary_attention(q, k_sum, v_sum, 8, 4, return_stats=True)
    probs = (q @ k_sum.transpose(-2, -1) / 2.0).softmax(-1)
    torch.testing.assert_close(out, probs @ v_sum)
    assert 0 < entropy <= torch.log(torch.tensor(2.0))
    empty = k_sum[:, :, :0]
    out, (_, max_logit) = summary_attention(q, empty, empty, 0, 4, return_stats=True)
    assert (out == 0).all() and max_logit == float("-inf")


def test_gradients_reach_queries_and_summaries_but_not_through_empty_rows():
    q, k_sum, v_sum = (torch.randn(1, 2, 6, 4, requires_grad=True) for _ in range(3))
    summary_attention(q, k_sum[:, :, :2], v_sum[:, :, :2], 0, 3).pow(2).sum().backward()
    assert torch.isfinite(q.grad).all() and (q.grad[:, :, :2] == 0).all() and q.grad[:, :, 2:].abs().sum() > 0
    assert k_sum.grad[:, :, :2].abs().sum() > 0 and v_sum.grad[:, :, :2].abs().sum() > 0
