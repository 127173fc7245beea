"""FAM's SGD update gives the same bits tensor by tensor (the CPU path) as with foreach ops (the GPU path), with
fixed and adaptive momenta and coupled L2, and equals the textbook formula."""

import torch

from famlab.optim.fam_update import lerp_weights, sgd_update

SHAPES = [(300, 40), (40,), (7, 9, 3)]


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(3)]


def test_per_tensor_and_foreach_agree_bit_for_bit():
    results = []
    for per_tensor in (True, False):
        params, grads, ms = _tensors()
        weights = lerp_weights(ms, 0.9, {0: torch.tensor(0.95), 2: torch.tensor(0.8)})
        sgd_update(params, grads, ms, weights, 0.1, 0.01, per_tensor)
        results.append(params + ms)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_the_update_is_ema_momentum_with_coupled_l2():
    params, grads, ms = _tensors()
    alphas = [0.95, 0.9, 0.8]
    expect_m = [a * m + (1 - a) * (g + 0.01 * p) for a, m, g, p in zip(alphas, ms, grads, params)]
    expect_p = [p - 0.1 * m for p, m in zip(params, expect_m)]
    weights = lerp_weights(ms, 0.9, {0: torch.tensor(0.95), 2: torch.tensor(0.8)})
    assert isinstance(weights[1], float) and isinstance(weights[0], torch.Tensor)
    sgd_update(params, grads, ms, weights, 0.1, 0.01, per_tensor=True)
    for got, want in zip(ms + params, expect_m + expect_p):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
