"""FAM frequency handlers: band layouts over rfft bins and the momentum rule of each parameter kind.

A *layout* maps the ``T = N//2 + 1`` rfft bins of a length-``N`` signal onto ``n`` bands by half-open edges
``[(start_i, end_i)]``; bins outside every band are dropped (they contribute to no band).

Spatial versus temporal spectrum: the spatial analysis (the default) uses the layouts exactly as below, so the
``linear``, ``log`` and ``legacy`` layouts drop the highest bin(s), among them the Nyquist bin. Over time
(``spectrum="temporal"``) the Nyquist bin is the period-2 oscillation, a gradient component that flips sign
every step, the case the temporal analysis exists for; there the layouts are built with ``nyquist=True``, which
extends the last band to the end of the spectrum (``end_{n-1} = T``), so every layout covers it. Layouts are precomputed
once per ``(T, n, layout)`` as a bin->band one-hot matrix ``[T, n]`` so band energies of a whole batch of
spectra are one matmul (no Python loop, no host sync).

Layouts (the edges of the reference FAM handlers unless marked; docs/provenance.md §1.2):

* ``linear`` (FrequencyHandler, EmbeddingFrequencyHandler): width ``w = T//n``, band i = ``[i*w, (i+1)*w)``;
  ``w == 0`` -> no bins (all bands 0); bins ``>= n*w`` dropped.
* ``log`` (ConvFrequencyHandler): ``start_i = max(0, floor(T^(i/n) - 1))``, ``end_i = min(floor(T^((i+1)/n) - 1), T)``;
  the last bin is always dropped; low bands are empty for small T.
* ``legacy`` (the reference AttentionFrequencyHandler): each half cut into equal bands of equal width, so in
  effect the linear layout again (high half offset to start at ``T//2``; bins past the last band dropped).
* ``high`` (famlab's layout, AttentionFrequencyHandler default): the low half ``[0, T//2)`` gets ``max(1, n//3)``
  bands and the high half the other ``n - n//3``, so high-frequency bands are about twice as narrow; every bin is
  covered. Band values are bin-count corrected (``energy_i * (T/n) / bins_i``), otherwise the wider low bands
  would win the argmax by bin count; a flat spectrum gives ``1/n`` per band as in the equal-width layouts.

Band energies are sums of the magnitude spectrum ``|rfft|`` normalised to sum 1 (``P/(sum P + eps)``).
Momentum rules (the reference thresholds and caps) take smoothed bands ``H [..., n]`` and the group alpha;
tensor inputs give tensor outputs via ``torch.where`` (no sync), sequences give a Python float.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch

LAYOUTS = ("linear", "log", "legacy", "high")


@cache
def band_edges(T: int, n: int, layout: str, nyquist: bool = False) -> tuple[tuple[int, int], ...]:
    """Half-open bin ranges ``(start, end)`` of the ``n`` bands for ``T`` rfft bins (empty if start >= end);
    ``nyquist=True`` extends the last band to ``T`` so the highest (Nyquist) bin is never dropped."""
    if nyquist:
        edges = band_edges(T, n, layout)
        return edges[:-1] + ((min(edges[-1][0], T - 1), T),)
    if T <= 0 or n <= 0:
        raise ValueError(f"band_edges: need T > 0 and n_bands > 0, got T={T}, n={n}")
    if layout == "linear":
        w = T // n
        return tuple((i * w, min((i + 1) * w, T)) for i in range(n))
    if layout == "log":
        # int() truncation == floor for the non-negative values here.
        return tuple((max(0, int(T ** (i / n) - 1)), min(int(T ** ((i + 1) / n) - 1), T)) for i in range(n))
    if layout == "legacy":
        if n < 2:
            raise ValueError("optimizer.n_bands must be >= 2 for the attention 'legacy' layout (one band per half)")
        h, half = n // 2, T // 2
        wl, wh = half // h, (T - half) // (n - h)
        low = [(i * wl, min((i + 1) * wl, half)) for i in range(h)]
        high = [(half + j * wh, min(half + (j + 1) * wh, T)) for j in range(n - h)]
        return tuple(low + high)
    if layout == "high":
        if n == 1:
            return ((0, T),)
        h, half = max(1, n // 3), T // 2
        low = [(i * half) // h for i in range(h)]
        high = [half + (j * (T - half)) // (n - h) for j in range(n - h)]
        edges = low + high + [T]
        return tuple((edges[i], edges[i + 1]) for i in range(n))
    raise ValueError(f"band layout must be one of {LAYOUTS}, got {layout!r}")


@cache
def _band_matrix_cpu(T: int, n: int, layout: str, nyquist: bool = False) -> torch.Tensor:
    m = torch.zeros(T, n)
    for i, (s, e) in enumerate(band_edges(T, n, layout, nyquist)):
        if e > s:
            # "high": bin-count corrected (energy * (T/n) / bins) so narrow high bands are not swamped by
            # the wide low band; a flat spectrum gives 1/n per band, as the equal-width layouts do.
            m[s:e, i] = (T / n) / (e - s) if layout == "high" else 1.0
    return m


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def band_matrix(T: int, n: int, layout: str, device: torch.device | str = "cpu", nyquist: bool = False) -> torch.Tensor:
    """Bin->band weights ``[T, n]`` (float32; one-hot, scaled for "high") on ``device``; cached per key."""
    key = (T, n, layout, str(device), nyquist)
    mat = _DEVICE_CACHE.get(key)
    if mat is None:
        mat = _DEVICE_CACHE[key] = _band_matrix_cpu(T, n, layout, nyquist).to(device)
    return mat


def band_index(T: int, n: int, layout: str, nyquist: bool = False) -> torch.Tensor:
    """LongTensor ``[T]``: band of each bin, ``n`` for dropped bins (for ``bincount``-style use and tests)."""
    mat = _band_matrix_cpu(T, n, layout, nyquist)
    return torch.where(mat.sum(1) > 0, mat.argmax(1), torch.full((T,), n))


def normalized_spectrum(signal: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``|rfft(signal)|`` over the last dim, normalised to sum 1: ``[..., N] -> [..., N//2+1]`` float32."""
    spec = torch.fft.rfft(signal.float(), dim=-1)
    re, im = spec.real, spec.imag
    mag = torch.addcmul(re * re, im, im).sqrt_()  # == spec.abs(), ~2x faster than complex abs on CPU
    return mag / (mag.sum(-1, keepdim=True) + eps)  # an all-zero spectrum stays 0 (seed: no-op branch)


def _as_tensor(H) -> tuple[torch.Tensor, bool]:
    if isinstance(H, torch.Tensor):
        return H, True
    return torch.tensor([float(h) for h in H], dtype=torch.float32), False


class FrequencyHandler:
    """Default handler: linear bands; alpha + 0.05 (cap 0.95) when the upper half holds > 30% of the energy."""

    name = "default"
    layout = "linear"

    def band_layout(self) -> str:
        return self.layout

    def analyze(self, sample: torch.Tensor, n_bands: int, eps: float = 1e-8, nyquist: bool = False) -> torch.Tensor:
        """Band energies ``[..., n_bands]`` of ``sample [..., N]`` (batched; one matmul); ``nyquist=True``
        (temporal spectrum) keeps the highest bin in the last band."""
        spec = normalized_spectrum(sample, eps)
        return spec @ band_matrix(spec.shape[-1], n_bands, self.band_layout(), spec.device, nyquist)

    def momentum(self, H: torch.Tensor, alpha: float) -> torch.Tensor:
        """Tensor rule: ``H [..., n]`` -> alpha_eff ``[...]`` (float32, no sync)."""
        n = H.shape[-1]
        hi = H[..., n // 2 :].sum(-1)
        return torch.where(hi > 0.3, min(0.95, alpha + 0.05), alpha).to(torch.float32)

    def get_adaptive_momentum(self, H: torch.Tensor | Sequence[float], alpha: float):
        """Bands (tensor or list of floats) -> alpha_eff (tensor, or float for list input)."""
        t, is_tensor = _as_tensor(H)
        out = self.momentum(t, float(alpha))
        return out if is_tensor else float(out)


class ConvFrequencyHandler(FrequencyHandler):
    """Conv handler: log bands; mid half > 40% -> alpha+0.07 (cap 0.97); elif top quarter > 30% -> +0.05 (0.95)."""

    name = "conv"
    layout = "log"

    def momentum(self, H: torch.Tensor, alpha: float) -> torch.Tensor:
        n = H.shape[-1]
        mid = H[..., n // 4 : (3 * n) // 4].sum(-1)
        hi = H[..., (3 * n) // 4 :].sum(-1)
        base = torch.where(hi > 0.3, min(0.95, alpha + 0.05), alpha)
        return torch.where(mid > 0.4, min(0.97, alpha + 0.07), base).to(torch.float32)


class AttentionFrequencyHandler(FrequencyHandler):
    """Attention handler: dominant band k (first argmax) < n//4 -> max(0.85, alpha - 0.05);
    k > 3n//4 (strict) -> min(0.98, alpha + 0.08); else alpha.

    ``band_layout="high"`` (default) gives the high half of the spectrum twice as many, narrower bands;
    ``"legacy"`` splits each half into equal-width bands, so all bands are equal-width. ``"legacy"`` needs
    ``n_bands >= 2`` (one band per half) and rejects fewer with a ValueError.
    """

    name = "attention"

    def __init__(self, band_layout: str = "high"):
        if band_layout not in ("high", "legacy"):
            raise ValueError(f"optimizer.attention_layout must be 'high' or 'legacy', got {band_layout!r}")
        self.layout = band_layout

    def momentum(self, H: torch.Tensor, alpha: float) -> torch.Tensor:
        n = H.shape[-1]
        k = H.argmax(-1)  # ties go to the first maximum
        up = torch.where(k > (3 * n) // 4, min(0.98, alpha + 0.08), alpha)
        return torch.where(k < n // 4, max(0.85, alpha - 0.05), up).to(torch.float32)


class EmbeddingFrequencyHandler(FrequencyHandler):
    """Embedding handler: linear bands; top quarter > 20% -> alpha + 0.08 (cap 0.98)."""

    name = "embedding"
    layout = "linear"

    def momentum(self, H: torch.Tensor, alpha: float) -> torch.Tensor:
        n = H.shape[-1]
        hi = H[..., (3 * n) // 4 :].sum(-1)
        return torch.where(hi > 0.2, min(0.98, alpha + 0.08), alpha).to(torch.float32)


HANDLERS = {
    "default": FrequencyHandler,
    "conv": ConvFrequencyHandler,
    "attention": AttentionFrequencyHandler,
    "embedding": EmbeddingFrequencyHandler,
}


def make_handler(name: str, attention_layout: str = "high") -> FrequencyHandler:
    """Handler instance for a group's ``handler`` key (``default|conv|attention|embedding``)."""
    if name not in HANDLERS:
        raise ValueError(f"param group handler must be one of {sorted(HANDLERS)}, got {name!r}")
    return AttentionFrequencyHandler(attention_layout) if name == "attention" else HANDLERS[name]()


def bins_per_band(T: int, n: int, layout: str, nyquist: bool = False) -> list[int]:
    """Number of bins in each band (diagnostics and tests)."""
    return [max(0, e - s) for s, e in band_edges(T, n, layout, nyquist)]
