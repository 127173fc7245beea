"""Training windows drawn by (seed, step): the data stream is a pure function of the step.

Every variant in a sweep sees the same windows, and a run resumed at step N continues with
exactly the batches an uninterrupted run would have seen. Under DDP the *global* batch of a
step is drawn once and each rank takes its slice, so a two-process run sees the same data as
one process with the same global batch.
"""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset


def step_seed(seed: int, step: int) -> int:
    """The fixed integer mix of (seed, step) that seeds step ``step``'s generator."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded by (seed, step) through a fixed integer mix."""
    return torch.Generator().manual_seed(step_seed(seed, step))


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def sample_windows(tokens, context: int, batch: int, generator: torch.Generator) -> dict:
    """``batch`` random windows of ``context + 1`` tokens -> inputs and next-token targets ``[B, T]``.

    ``tokens`` is a 1-D tensor or a ``TokenStore`` (token shards on disk); both give the same windows for
    the same generator state (starts drawn by ``torch.randint`` over ``tokens.numel()``).
    """
    starts = torch.randint(0, tokens.numel() - context - 1, (batch,), generator=generator)
    if isinstance(tokens, torch.Tensor):
        w = tokens[starts[:, None] + torch.arange(context + 1)[None, :]].long()
    else:
        w = torch.from_numpy(tokens.windows(starts.numpy(), context + 1))
    return {"input": w[:, :-1], "target": w[:, 1:]}


class StepWindows(IterableDataset):
    """Infinite stream of batches; batch ``i`` is ``make_batch(step_generator(seed, i))``.

    ``start_step`` is restored from the data module's checkpointed state so the
    stream resumes where it stopped. ``make_batch(generator, global_batch)`` returns a dict of
    ``[global_batch, T]`` tensors; this rank keeps rows ``rank::world``.
    """

    def __init__(self, make_batch, global_batch: int, seed: int):
        self.make_batch, self.global_batch, self.seed = make_batch, global_batch, seed
        self.start_step = 0

    def __iter__(self):
        rank, size = world()
        if self.global_batch % size:
            raise ValueError(f"data.batch_size={self.global_batch} must be divisible by the {size} processes")
        step, generator = self.start_step, torch.Generator()  # reseeded each step: step_generator's state
        while True:
            batch = self.make_batch(generator.manual_seed(step_seed(self.seed, step)), self.global_batch)
            yield batch if size == 1 else {k: v[rank::size] for k, v in batch.items()}
            step += 1
