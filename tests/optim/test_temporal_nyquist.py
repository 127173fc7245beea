"""Temporal spectrum: every band layout covers the Nyquist bin, and period-2/3/4 gradient oscillations move
alpha_eff by each handler's rule (window 64, the shipped band counts)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from famlab.optim.fam import FAMOptimizer
from famlab.optim.frequency import LAYOUTS, band_index, band_matrix, make_handler

N_BANDS = {"default": 8, "conv": 10, "attention": 12, "embedding": 8}  # conf/optimizer/fam.yaml
ALPHA = 0.9
UP5, UP8, DOWN5 = min(0.95, ALPHA + 0.05), min(0.98, ALPHA + 0.08), max(0.85, ALPHA - 0.05)
# Band of the period-P peak for T = 33 bins: P=2 -> bin 32 (Nyquist), P=4 -> bin 16 (both exact: 64 steps hold
# whole periods). default (linear, upper half = bins 16..32 > 30%): +0.05; embedding (top quarter = bins 24..32
# > 20%): +0.08 for P=2 only; conv (log; top quarter = bands 7-9 = bins 10..32 > 30%): +0.05; attention ("high";
# dominant band 11 = bins 30..32 is > 3n/4 = 9 for P=2, band 4 for P=4): +0.08 for P=2 only. P=3 leaks (64 is
# not a multiple of 3) and is checked against the rules applied to an independent numpy spectrum.
EXPECTED = {
    "default": {2: UP5, 4: UP5},
    "embedding": {2: UP8, 4: ALPHA},
    "conv": {2: UP5, 4: UP5},
    "attention": {2: UP8, 4: ALPHA},
}


def _rule(handler: str, bands: np.ndarray, a: float) -> float:
    """The handlers' momentum rules, written out from their specification."""
    n = len(bands)
    if handler == "default":
        return min(0.95, a + 0.05) if bands[n // 2 :].sum() > 0.3 else a
    if handler == "embedding":
        return min(0.98, a + 0.08) if bands[(3 * n) // 4 :].sum() > 0.2 else a
    if handler == "conv":
        if bands[n // 4 : (3 * n) // 4].sum() > 0.4:
            return min(0.97, a + 0.07)
        return min(0.95, a + 0.05) if bands[(3 * n) // 4 :].sum() > 0.3 else a
    k = int(np.argmax(bands))
    return max(0.85, a - 0.05) if k < n // 4 else (min(0.98, a + 0.08) if k > (3 * n) // 4 else a)


def _reference_bands(handler: str, trace: np.ndarray) -> np.ndarray:
    mag = np.abs(np.fft.rfft(trace.astype(np.float64)))
    spectrum = mag / mag.sum()
    layout = make_handler(handler).band_layout()
    return spectrum @ band_matrix(len(spectrum), N_BANDS[handler], layout, nyquist=True).double().numpy()


WINDOW = 64


def _signal(period: int, t: int) -> float:
    return math.cos(2 * math.pi * t / period)  # zero mean over a period; P=2: +1, -1, ...


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [4, 8, 10, 12])
def test_every_layout_covers_the_nyquist_bin_over_time(layout, n):
    T = WINDOW // 2 + 1
    if layout == "legacy" and n < 2:
        return
    assert int(band_index(T, n, layout, nyquist=True)[-1]) == n - 1  # the last band holds the Nyquist bin
    kept = band_index(T, n, layout) < n
    assert (band_index(T, n, layout, nyquist=True)[:-1][kept[:-1]] == band_index(T, n, layout)[:-1][kept[:-1]]).all()


@pytest.mark.parametrize("handler", sorted(EXPECTED))
@pytest.mark.parametrize("period", [2, 3, 4])
def test_periodic_gradients_move_alpha_eff_by_the_handler_rule(handler, period):
    direction = torch.randn(40, 30, generator=torch.Generator().manual_seed(0))
    p = nn.Parameter(torch.zeros(40, 30))
    opt = FAMOptimizer(
        [{"params": [p], "handler": handler, "n_bands": N_BANDS[handler], "alpha": ALPHA}],
        lr=1e-3,
        spectrum="temporal",
        window=WINDOW,
        fam_start_step=WINDOW,
        min_size=0,
    )
    for t in range(WINDOW + 1):  # the analysis starts once the ring buffer is full (first analysis: H = b)
        p.grad = _signal(period, t) * direction
        opt.step()
    st = opt.state[p]
    assert st["fam_count"] == 1
    reference = _rule(handler, _reference_bands(handler, st["trace"].numpy()), ALPHA)
    assert float(st["alpha_eff"]) == pytest.approx(reference, abs=1e-6)
    if period in EXPECTED[handler]:
        assert reference == pytest.approx(EXPECTED[handler][period])
    if period == 2:  # all band energy in the band holding the Nyquist bin (the seed's layouts had none)
        assert float(st["band_ema"][-1]) == pytest.approx(float(st["band_ema"].sum()), rel=1e-4)
        assert float(st["band_ema"][-1]) > 0.9
