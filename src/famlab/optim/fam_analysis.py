"""FAM's frequency analysis of one param group: when it runs, the temporal trace, band EMAs and alpha_eff.

Schedule (:func:`analysis_due`): with the optimizer's step counter ``t`` (a Python int), the group's
``fam_start_step`` ``s`` and the optimizer's ``interval`` ``k``, the analysis runs at ``t = s+1, s+1+k,
s+1+2k, ...``; in between every analysed tensor keeps the ``alpha_eff`` of its last analysis. The band EMA
``H <- beta^k * H + (1 - beta^k) * b`` (first analysis: ``H <- b``) so its time constant in steps does not
depend on ``k``. Sample indices are drawn only at analysis steps, so the generator advances once per interval.

Signals: ``spectrum="spatial"`` samples each gradient (:func:`famlab.optim.sampling.spatial_samples`, ``[L_i]``
with ``L_i`` a function of the shape); ``spectrum="temporal"`` uses each tensor's ``trace`` ``[window]``, to
which :func:`record_traces` writes one statistic every step. Signals of equal length and device are stacked
``[P, L]`` and go through one batched rfft and band matmul (``[P, n_bands]``), then the handler's rule gives
``alpha_eff [P]``. Everything stays on the device: no host sync.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from famlab.optim.frequency import FrequencyHandler
from famlab.optim.sampling import spatial_samples, temporal_probe


def analysis_due(step: int, fam_start_step: int, interval: int) -> bool:
    """True at optimizer steps ``fam_start_step + 1 + j*interval`` (j = 0, 1, ...)."""
    return step > fam_start_step and (step - fam_start_step - 1) % interval == 0


class TemporalProbes:
    """Fixed sparse random direction (indices ``[K]``, signs ``[K]``) per parameter, cached by identity; a pure
    function of ``(seed, ordinal)`` (:func:`famlab.optim.sampling.temporal_probe`), so it needs no checkpoint."""

    def __init__(self):
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, p: torch.Tensor, seed: int, ordinal: int) -> tuple[torch.Tensor, torch.Tensor]:
        probe = self._cache.get(id(p))
        if probe is None:
            probe = self._cache[id(p)] = temporal_probe(p.numel(), seed, ordinal, p.device)
        return probe


def record_traces(eligible, params, grads, states, ords, probes: TemporalProbes, seed: int, window: int, wd=0.0):
    """Write this step's projection of each eligible gradient ``g + wd*p`` on its probe into its ring buffer
    ``trace`` ``[window]`` at slot ``(step - 1) % window``."""
    stats, slots = [], []
    for i in eligible:
        idx, sign = probes.get(params[i], seed, ords[i])
        entries = grads[i].reshape(-1).index_select(0, idx)
        if wd != 0:
            entries = entries.add_(params[i].detach().reshape(-1).index_select(0, idx), alpha=wd)
        stats.append(torch.dot(entries.float(), sign))
        slots.append(states[i]["trace"].select(0, (states[i]["step"] - 1) % window))
    torch._foreach_copy_(slots, stats)


def analyze(
    handler: FrequencyHandler,
    group: dict,
    due: list[int],
    grads: list[torch.Tensor],
    states: list[dict],
    *,
    params: list[torch.Tensor],
    wd: float,
    temporal: bool,
    interval: int,
    generator_for: Callable[[torch.device], torch.Generator],
) -> None:
    """Update ``band_ema``, ``alpha_eff`` and ``fam_count`` of the tensors ``due`` (indices into ``grads`` /
    ``params`` / ``states``) from their current signals (spatial: samples of ``g + wd*p``); the EMA weight is
    ``1 - beta**interval``."""
    if temporal:
        signals = [states[i]["trace"] for i in due]
    else:
        decay = ([params[i] for i in due], wd) if wd != 0 else None
        signals = spatial_samples([grads[i] for i in due], generator_for, decay)
    buckets: dict[tuple, list] = defaultdict(list)  # same signal length and device -> one batched rfft
    for i, signal in zip(due, signals):
        buckets[(signal.shape[0], signal.device)].append((i, signal))
    weight = 1.0 - group["beta"] ** interval
    for items in buckets.values():
        idx = [i for i, _ in items]
        bands = handler.analyze(
            torch.stack([s for _, s in items]), group["n_bands"], group["eps"], nyquist=temporal
        )  # [P, n_bands]
        emas = [states[i]["band_ema"] for i in idx]
        smoothed = torch.stack(emas).lerp_(bands, weight)
        for row, i in enumerate(idx):
            if states[i]["fam_count"] == 0:  # first analysis: H <- b
                smoothed[row].copy_(bands[row])
            states[i]["fam_count"] += 1
        alpha_eff = handler.momentum(smoothed, float(group["alpha"]))  # [P]
        torch._foreach_copy_(emas, list(smoothed.unbind(0)))
        torch._foreach_copy_([states[i]["alpha_eff"] for i in idx], list(alpha_eff.unbind(0)))
