"""Per-tensor state and the seeded sampling generators of :class:`famlab.optim.fam.FAMOptimizer`.

Per-parameter state (``optimizer.state[p]``) of a parameter ``p`` of shape ``S``:

* ``step`` (Python int): optimizer steps in which ``p`` had a gradient;
* ``exp_avg`` ``S``: the momentum ``m``;
* ``base="adam"`` only: ``exp_avg_sq`` ``S`` (second moment) and ``beta1_prod`` (0-dim float32,
  ``prod_t alpha_t`` for the bias correction);
* tensors the analysis may reach (``analysis`` on and ``numel(p) > min_size``): ``fam_count`` (Python int,
  analyses so far), ``band_ema`` ``[n_bands]`` float32 (smoothed band energies), ``alpha_eff`` (0-dim
  float32, the momentum chosen by the last analysis; the group's ``alpha`` before the first), and for
  ``spectrum="temporal"`` ``trace`` ``[window]`` float32 (ring buffer of the per-step gradient statistic).

The sampling generators (:class:`SamplingGenerators`) are one seeded ``torch.Generator`` per device, checkpointed
under index-free keys (:func:`rng_key`) so a checkpoint written on one rank restores on another.
"""

from __future__ import annotations

import contextlib

import torch

#: State entries kept in float32 whatever the parameter dtype (load_state_dict casts them back).
FLOAT32_STATE = ("band_ema", "alpha_eff", "beta1_prod", "trace")


def init_state(p: torch.Tensor, st: dict, group: dict, *, base: str, analysis: bool, spectrum: str, window: int):
    """Fill the empty state ``st`` of ``p`` (see the module docstring for the entries and shapes)."""
    st["step"] = 0
    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if base == "adam":
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["beta1_prod"] = torch.ones((), dtype=torch.float32, device=p.device)
    if analysis and p.numel() > group["min_size"]:
        st["fam_count"] = 0
        st["band_ema"] = torch.zeros(group["n_bands"], dtype=torch.float32, device=p.device)
        st["alpha_eff"] = torch.full((), float(group["alpha"]), dtype=torch.float32, device=p.device)
        if spectrum == "temporal":
            st["trace"] = torch.zeros(window, dtype=torch.float32, device=p.device)


def rng_key(device: torch.device) -> str:
    """Checkpoint key of a device's sampling generator: its type (``cuda:0`` and ``cuda:1`` both -> ``cuda``)."""
    return torch.device(device).type


def by_type(rng: dict) -> dict:
    """Saved generator states with index-free keys: the lowest-index ``cuda:N`` key (older checkpoints) becomes
    ``cuda`` unless a ``cuda`` entry exists; further indexed keys stay as they are."""
    out = {k: v for k, v in rng.items() if ":" not in k}
    for key in sorted((k for k in rng if ":" in k), key=lambda k: (k.split(":")[0], int(k.split(":")[1]))):
        out[key if key.split(":")[0] in out else key.split(":")[0]] = rng[key]
    return out


class SamplingGenerators:
    """One seeded ``torch.Generator`` per device, created on first use; saved states (uint8 tensors) that arrive
    before a device's generator exists are kept pending and applied when it is created."""

    def __init__(self, pending: dict | None = None):
        self.generators: dict[str, torch.Generator] = {}
        self.by_device: dict[torch.device, torch.Generator] = {}
        self.pending: dict[str, torch.Tensor] = by_type(pending or {})

    def get(self, device: torch.device, seed: int) -> torch.Generator:
        """The generator of ``device`` (seeded with ``seed``, or restored from a pending saved state)."""
        gen = self.by_device.get(device)
        if gen is None:
            key = rng_key(device)
            if key in self.generators:  # a second device of the same type in one process keeps its index
                key = str(device)
            gen = torch.Generator(device=device)
            gen.manual_seed(seed)
            if key in self.pending:
                gen.set_state(self.pending.pop(key))
            self.generators[key] = gen
            self.by_device[device] = gen
        return gen

    def states(self) -> dict[str, torch.Tensor]:
        """Every generator's state (and still-pending saved states), keyed by :func:`rng_key`."""
        return {**self.pending, **{key: gen.get_state() for key, gen in self.generators.items()}}

    def load(self, rng: dict) -> None:
        """Restore saved states: live generators now, the others when they are created."""
        self.pending = {k: v.detach().cpu().to(torch.uint8) for k, v in by_type(rng).items()}
        for key, gen in self.generators.items():
            if key in self.pending:
                gen.set_state(self.pending.pop(key))


def autocast_off(groups) -> contextlib.ExitStack:
    """Autocast disabled for every device type holding parameters (the analysis and update stay fp32)."""
    stack = contextlib.ExitStack()
    for device_type in sorted({p.device.type for g in groups for p in g["params"]}):
        stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


def refuse_sharded(groups) -> None:
    """FAM's spectrum needs whole tensors; FSDP hands the optimizer shards (DTensors)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return
    if any(isinstance(p, DTensor) for g in groups for p in g["params"]):
        raise ValueError(
            "optimizer=fam needs whole parameter tensors for its frequency analysis and does not "
            "support FSDP-sharded parameters; use trainer=ddp, or optimizer=adamw|adam|sgd with trainer=fsdp"
        )
