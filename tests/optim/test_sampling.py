"""Seed gradient sampling (rows x cols / flat / whole) and the temporal probe."""

import torch

from famlab.optim.sampling import sample_indices, spatial_sample, spatial_samples, temporal_probe


def test_sample_lengths_follow_the_seed():
    gen = torch.Generator().manual_seed(0)
    assert spatial_sample(torch.randn(200, 100), gen).shape == (64 * 64,)
    assert spatial_sample(torch.randn(20, 600), gen).shape == (20 * 64,)  # fewer than 64 rows: all rows
    assert spatial_sample(torch.randn(100, 101, 3), gen).shape == (64 * 64 * 3,)  # conv kernel dims kept
    assert spatial_sample(torch.randn(20000), gen).shape == (1000,)
    assert spatial_sample(torch.randn(8000, 3), gen).shape == (64 * 3,)  # long range: randperm path
    g = torch.randn(50, 50)
    assert torch.equal(spatial_sample(g, gen), g.reshape(-1))  # numel <= 10000: whole tensor


def test_samples_are_a_rows_by_cols_submatrix_without_repeats():
    g = torch.arange(300 * 80 * 2, dtype=torch.float32).reshape(300, 80, 2)
    s = spatial_sample(g, torch.Generator().manual_seed(1)).reshape(64, 64, 2)
    rows, cols = (s[:, :, 0] // 160).long(), ((s[:, :, 0] % 160) // 2).long()
    assert torch.equal(s[..., 1], s[..., 0] + 1)  # trailing dim kept in order
    assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()  # a rows x cols grid
    assert rows[:, 0].unique().numel() == 64 and cols[0].unique().numel() == 64  # without replacement
    assert torch.equal(s, g[rows[:, 0]][:, cols[0]])


def test_same_shaped_tensors_get_independent_seeded_samples():
    grads = [torch.randn(300, 200) for _ in range(3)]
    a = spatial_samples(grads, lambda d: torch.Generator().manual_seed(5))
    b = spatial_samples(grads, lambda d: torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # deterministic given the generator
    idx = sample_indices((300, 200), 3, torch.Generator().manual_seed(5), "cpu")
    assert idx.shape == (3, 4096) and not torch.equal(idx[0], idx[1])
    noncontig = grads[0].t()  # sampled in its logical row-major order
    s = spatial_sample(noncontig, torch.Generator().manual_seed(2))
    assert set(s.tolist()) <= set(noncontig.flatten().tolist())


def test_temporal_probe_is_a_pure_function_of_seed_and_ordinal():
    i1, s1 = temporal_probe(1000, seed=0, ordinal=3, device="cpu")
    i2, s2 = temporal_probe(1000, seed=0, ordinal=3, device="cpu")
    i3, _ = temporal_probe(1000, seed=0, ordinal=4, device="cpu")
    assert torch.equal(i1, i2) and torch.equal(s1, s2) and not torch.equal(i1, i3)
    assert i1.dtype == torch.long and int(i1.max()) < 1000 and torch.allclose(s1.abs(), torch.full((256,), 1 / 16))
