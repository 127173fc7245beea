"""Band layouts and momentum rules of every handler on constructed spectra (seed spec 1.3-1.4)."""

import math

import pytest
import torch

from famlab.optim.frequency import (
    AttentionFrequencyHandler,
    ConvFrequencyHandler,
    EmbeddingFrequencyHandler,
    FrequencyHandler,
    band_edges,
    band_index,
    bins_per_band,
    make_handler,
    normalized_spectrum,
)

N = 4096  # T = 2049 bins
gen = torch.Generator().manual_seed(0)
t = torch.arange(N, dtype=torch.float32)
WHITE = torch.randn(N, generator=gen)
LOW = torch.sin(2 * math.pi * 3 * t / N) + 0.01 * WHITE  # energy in bin 3
HIGH = torch.cos(math.pi * t) + 0.01 * WHITE  # energy in the Nyquist bin 2048
HIGHISH = torch.sin(2 * math.pi * 1900 * t / N) + 0.01 * WHITE  # energy in bin 1900
MID = torch.sin(2 * math.pi * 100 * t / N) + 0.01 * WHITE  # bin 100: conv band 6 (mid half)


def seed_bands(signal, n, layout, eps=1e-8):
    """Loop reference of the seed's analyze(): sums of normalised |rfft| over each band's bins."""
    P = torch.fft.rfft(signal.double()).abs()
    if P.sum() > 0:
        P = P / (P.sum() + eps)
    return torch.tensor([float(P[s:e].sum()) if e > s else 0.0 for s, e in band_edges(len(P), n, layout)])


def test_conv_log_edges_match_worked_examples():
    edges = band_edges(2049, 10, "log")
    assert [s for s, _ in edges] + [edges[-1][1]] == [0, 1, 3, 8, 20, 44, 96, 207, 444, 954, 2048]
    assert sum(bins_per_band(2049, 10, "log")[-3:]) / 2049 > 0.85  # top three bands hold ~90% of bins
    small = bins_per_band(33, 10, "log")
    assert small[0] == 0 and small[2] == 0 and all(b > 0 for i, b in enumerate(small) if i not in (0, 2))
    assert band_index(33, 10, "log")[-1] == 10  # last bin always dropped


def test_linear_and_legacy_layouts():
    assert band_edges(9, 4, "linear") == ((0, 2), (2, 4), (4, 6), (6, 8))  # bin 8 dropped
    assert bins_per_band(3, 4, "linear") == [0, 0, 0, 0]  # w = 0 -> all bands empty
    assert bins_per_band(2049, 12, "legacy") == [170] * 12  # the seed's "high emphasis" is equal width
    assert band_edges(2049, 12, "legacy")[6] == (1024, 1194)  # high half starts at T//2
    with pytest.raises(ValueError, match="n_bands must be >= 2"):
        band_edges(33, 1, "legacy")


@pytest.mark.parametrize("T,n", [(2049, 12), (33, 12), (513, 8), (2049, 6)])
def test_high_layout_has_more_narrower_bands_in_the_high_half(T, n):
    edges, widths = band_edges(T, n, "high"), bins_per_band(T, n, "high")
    assert sum(widths) == T and all(w >= 1 for w in widths)  # covers every bin, no empty band
    n_low = sum(1 for s, _ in edges if s < T // 2)
    assert n_low == max(1, n // 3) and n - n_low >= n_low
    assert max(widths[n_low:]) <= min(widths[:n_low])
    delta = torch.zeros(2 * (T - 1))
    delta[0] = 1.0  # |rfft(delta)| == 1 in every bin: a flat spectrum
    bands = AttentionFrequencyHandler("high").analyze(delta, n)
    assert torch.allclose(bands, torch.full((n,), 1.0 / n), atol=1e-5)  # bin-count corrected


def test_high_layout_edges_2049_12():
    assert bins_per_band(2049, 12, "high") == [256] * 4 + [128] * 7 + [129]


@pytest.mark.parametrize(
    "handler,layout",
    [
        (FrequencyHandler(), "linear"),
        (ConvFrequencyHandler(), "log"),
        (EmbeddingFrequencyHandler(), "linear"),
        (AttentionFrequencyHandler("legacy"), "legacy"),
    ],
)
@pytest.mark.parametrize("n", [4, 8, 10, 12])
def test_batched_analyze_matches_loop_reference(handler, layout, n):
    signals = torch.stack([WHITE, LOW, HIGH, MID, torch.zeros(N)])
    got = handler.analyze(signals, n)
    want = torch.stack([seed_bands(s, n, layout) for s in signals]).float()
    assert got.shape == (5, n) and torch.allclose(got, want, atol=1e-5)
    assert torch.equal(got[-1], torch.zeros(n))  # all-zero gradient -> zero bands (seed: sum > 0 branch)
    small = handler.analyze(WHITE[:64], n)  # T=33
    assert torch.allclose(small, seed_bands(WHITE[:64], n, layout).float(), atol=1e-5)


def alpha_for(handler, signal, n, alpha):
    return float(handler.momentum(handler.analyze(signal, n), alpha))


def test_default_rule():
    h = FrequencyHandler()
    assert alpha_for(h, WHITE, 8, 0.9) == pytest.approx(0.95)  # hi ~ 0.5 > 0.3
    assert alpha_for(h, LOW, 8, 0.9) == pytest.approx(0.9)
    assert alpha_for(h, HIGHISH, 8, 0.9) == pytest.approx(0.95)
    assert alpha_for(h, HIGHISH, 8, 0.97) == pytest.approx(0.95)  # the cap is a min: "increase" lowers it
    H = [0.0] * 4 + [0.3, 0.0, 0.0, 0.0]
    assert h.get_adaptive_momentum(H, 0.9) == pytest.approx(0.9)  # strict > 0.3
    assert h.get_adaptive_momentum(H[:4] + [0.31, 0, 0, 0], 0.9) == pytest.approx(0.95)


def test_conv_rule():
    h = ConvFrequencyHandler()
    assert alpha_for(h, MID, 10, 0.9) == pytest.approx(0.97)  # mid > 0.4
    assert alpha_for(h, HIGHISH, 10, 0.9) == pytest.approx(0.95)  # top quarter > 0.3
    assert alpha_for(h, LOW, 10, 0.9) == pytest.approx(0.97)  # bin 3 is already "mid" in log bands
    assert alpha_for(h, 1.0 + 0.01 * WHITE, 10, 0.9) == pytest.approx(0.9)  # DC-dominated: band 0
    assert alpha_for(h, WHITE, 10, 0.9) == pytest.approx(0.95)  # bin-count effect of log bands (spec 1.4)
    assert h.get_adaptive_momentum([0.0] * 2 + [0.41] + [0.0] * 4 + [0.59, 0, 0], 0.93) == pytest.approx(0.97)


@pytest.mark.parametrize("layout", ["legacy", "high"])
def test_attention_rule(layout):
    h = AttentionFrequencyHandler(layout)
    assert alpha_for(h, LOW, 12, 0.92) == pytest.approx(0.87)  # argmax in the lowest quarter
    assert alpha_for(h, HIGHISH, 12, 0.92) == pytest.approx(0.98)  # bin 1900: top band
    assert alpha_for(h, LOW, 12, 0.88) == pytest.approx(0.85)  # floor at 0.85
    H = torch.zeros(3, 12)
    H[0, 3], H[1, 9], H[2, 10] = 1.0, 1.0, 1.0  # k = n//4 -> alpha; k = 3n//4 -> alpha (strict >); k = 10 -> up
    assert torch.allclose(h.momentum(H, 0.92), torch.tensor([0.92, 0.92, 0.98]))
    assert h.get_adaptive_momentum([0.5] * 12, 0.92) == pytest.approx(0.87)  # ties -> first max (band 0)


def test_high_layout_puts_a_near_nyquist_peak_in_the_top_bands():
    sig = torch.sin(2 * math.pi * 1100 * t / N) + 0.01 * WHITE  # bin 1100: legacy band 6, high band 4
    assert int(AttentionFrequencyHandler("legacy").analyze(sig, 12).argmax()) == 6
    assert int(AttentionFrequencyHandler("high").analyze(sig, 12).argmax()) == 4
    top = torch.sin(2 * math.pi * 2046 * t / N) + 0.01 * WHITE  # bin 2046: dropped by legacy, high band 11
    h = AttentionFrequencyHandler("high")
    assert int(h.analyze(top, 12).argmax()) == 11
    assert float(h.momentum(h.analyze(top, 12), 0.92)) == pytest.approx(0.98)
    assert float(AttentionFrequencyHandler("legacy").analyze(top, 12).sum()) < 0.5  # the peak is lost


def test_embedding_rule():
    h = EmbeddingFrequencyHandler()
    assert alpha_for(h, WHITE, 8, 0.95) == pytest.approx(0.98)  # top quarter ~ 0.25 > 0.2
    assert alpha_for(h, LOW, 8, 0.95) == pytest.approx(0.95)
    assert h.get_adaptive_momentum([0.0] * 8, 0.95) == pytest.approx(0.95)  # zero gradient sample -> base


def test_tensor_and_list_versions_agree_and_batch():
    for name in ("default", "conv", "attention", "embedding"):
        h = make_handler(name)
        H = torch.rand(6, 10, generator=gen)
        H = H / H.sum(-1, keepdim=True)
        batched = h.momentum(H, 0.9)
        assert batched.shape == (6,) and batched.dtype == torch.float32
        assert [h.get_adaptive_momentum(row.tolist(), 0.9) for row in H] == pytest.approx(batched.tolist())
    with pytest.raises(ValueError, match="handler must be one of"):
        make_handler("rnn")
    with pytest.raises(ValueError, match="optimizer.attention_layout"):
        AttentionFrequencyHandler("low")


def test_normalized_spectrum_sums_to_one():
    spec = normalized_spectrum(torch.randn(3, 100, generator=gen))
    assert spec.shape == (3, 51) and torch.allclose(spec.sum(-1), torch.ones(3), atol=1e-5)


def test_normalized_spectrum_is_the_rfft_magnitude():
    x = torch.randn(4, 4096, generator=gen)
    x[1] = 0.0  # all-zero sample: stays 0 (the seed's no-op branch)
    mag = torch.fft.rfft(x, dim=-1).abs()
    expected = mag / (mag.sum(-1, keepdim=True) + 1e-8)
    torch.testing.assert_close(normalized_spectrum(x), expected, rtol=1e-5, atol=1e-8)
    assert normalized_spectrum(x)[1].abs().sum() == 0
