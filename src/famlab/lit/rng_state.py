"""Random generator states that travel with a checkpoint: the CPU generator and, when CUDA is in
use, every CUDA device's generator (dropout on a GPU draws from the CUDA generator).

Under DDP every rank is seeded alike (``seed_everything(seed)``), so every rank draws the same
dropout masks on its own device; only rank 0 writes the checkpoint, and on resume every rank
sets its current device's generator to the state rank 0 saved for *its* current device, which is
the state every rank had.
"""

from __future__ import annotations

import torch


def capture() -> dict:
    """``{"torch_rng": ByteTensor, ["cuda_rng": [ByteTensor per device], "cuda_device": int]}``."""
    state = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
        state["cuda_device"] = torch.cuda.current_device()
    return state


def restore(state: dict) -> None:
    """Set the generators saved by :func:`capture` (CUDA ones only where CUDA is available)."""
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    cuda = state.get("cuda_rng")
    if not cuda or not torch.cuda.is_available():
        return
    if len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    saved_device = int(state.get("cuda_device", 0))
    if saved_device < len(cuda):  # this rank's device gets the saver's device state (identical across ranks)
        torch.cuda.set_rng_state(cuda[saved_device], device=torch.cuda.current_device())
