"""Spatial sampling dispatches one random draw per shape group and axis, not one per parameter."""

import collections

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from famlab.optim.fam import FAMOptimizer
from famlab.optim.sampling import sample_indices, spatial_samples

RANDOM_OPS = {"rand", "randperm", "randint", "uniform_", "normal_", "multinomial", "bernoulli"}


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the ``with`` block by name."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))

    def random(self) -> int:
        return sum(n for name, n in self.ops.items() if name in RANDOM_OPS)


def test_one_draw_per_axis_for_a_whole_shape_group():
    grads = [torch.randn(300, 200) for _ in range(6)] + [torch.randn(20000) for _ in range(3)]
    with OpCounter() as counter:
        samples = spatial_samples(grads, lambda device: torch.Generator().manual_seed(0))
    assert counter.random() == 3  # rows + cols of the (300, 200) group, entries of the (20000,) group
    assert [s.shape[0] for s in samples] == [64 * 64] * 6 + [1000] * 3


def test_batched_draws_stay_seeded_and_without_repeats():
    a = sample_indices((500, 70), 4, torch.Generator().manual_seed(3), "cpu")
    b = sample_indices((500, 70), 4, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    rows, cols = a.reshape(4, 64, 64) // 70, a.reshape(4, 64, 64) % 70
    assert all(rows[i, :, 0].unique().numel() == 64 and cols[i, 0].unique().numel() == 64 for i in range(4))
    flat = sample_indices((30000,), 2, torch.Generator().manual_seed(3), "cpu")
    assert flat.shape == (2, 1000) and flat[0].unique().numel() == 1000 and int(flat.max()) < 30000


def test_a_fam_step_draws_per_shape_not_per_parameter():
    params = [nn.Parameter(torch.zeros(128, 96)) for _ in range(8)] + [nn.Parameter(torch.zeros(12000))]
    opt = FAMOptimizer(params, fam_start_step=0, min_size=100, lr=0.1)
    for p in params:
        p.grad = torch.randn(p.shape)
    opt.step()  # builds the state
    with OpCounter() as counter:
        opt.step()
    assert counter.random() == 3  # 2 axes of the (128, 96) group + 1 for the 1-D tensor (was 17 randperms)
    assert counter.ops["topk"] == 3 and counter.ops["index_select"] == 9  # one gather per sampled tensor
