"""FAM's analysis interval: the analysis runs at steps s+1, s+1+k, ...; between analyses each tensor keeps its
alpha_eff and band EMA; the EMA weight is 1 - beta**k; the step counter travels in the state dict, so a run
resumed in the middle of an interval equals the uninterrupted run; no host sync; the key is validated."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from famlab.model.transformer import TransformerLM
from famlab.optim import factories
from famlab.optim.fam import FAMOptimizer
from famlab.optim.fam_analysis import analysis_due
from famlab.optim.fam_config import SEED_ANALYSIS
from famlab.optim.frequency import make_handler
from famlab_testing import HostSyncCatcher

CONF = Path(__file__).resolve().parents[2] / "conf"
START, K = 2, 4


def _params():
    """A 200x64 and a 12000-entry weight: both above the sampling threshold, so every analysis draws indices."""
    gen = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(200, 64, generator=gen)), nn.Parameter(torch.randn(12000, generator=gen))]


def _steps(opt, params, start, n):
    for t in range(start, start + n):
        gen = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def _make(params, interval=K, **kw):
    return FAMOptimizer(params, lr=0.01, fam_start_step=START, min_size=100, interval=interval, **kw)


def test_the_schedule_is_the_first_active_step_then_every_interval():
    assert [t for t in range(1, 16) if analysis_due(t, START, K)] == [3, 7, 11, 15]
    assert [t for t in range(1, 6) if analysis_due(t, 0, 1)] == [1, 2, 3, 4, 5]


def test_between_analyses_nothing_of_the_analysis_moves():
    params = _params()
    opt = _make(params)
    seen = []
    for t in range(12):
        _steps(opt, params, t, 1)
        st = opt.state[params[0]]
        rng = opt.state_dict()["fam_rng"].get("cpu", torch.zeros(0, dtype=torch.uint8))  # none before the first draw
        seen.append((st["fam_count"], st["alpha_eff"].clone(), st["band_ema"].clone(), rng.clone()))
    counts = [c for c, *_ in seen]
    assert counts == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]  # steps 3, 7, 11
    for (c0, a0, b0, r0), (c1, a1, b1, r1) in zip(seen, seen[1:]):
        frozen = c0 == c1
        assert frozen == (torch.equal(a0, a1) and torch.equal(b0, b1) and torch.equal(r0, r1))  # H and rng move


def test_alpha_eff_of_the_last_analysis_drives_the_momentum_between_analyses():
    p = nn.Parameter(torch.zeros(40, 40))
    opt = FAMOptimizer([p], lr=0.1, alpha=0.9, fam_start_step=0, min_size=10, interval=5)
    st = opt.state
    gen = torch.Generator().manual_seed(0)
    for t in range(3):
        p.grad = torch.randn(40, 40, generator=gen)
        m_before = st[p]["exp_avg"].clone() if p in st else torch.zeros_like(p)
        opt.step()
        a = st[p]["alpha_eff"]
        torch.testing.assert_close(st[p]["exp_avg"], a * m_before + (1 - a) * p.grad, rtol=1e-6, atol=1e-7)
    assert st[p]["fam_count"] == 1


def test_the_band_ema_uses_beta_to_the_interval():
    """Whole-tensor signals (no sampling): H after the second analysis is beta^k * b1 + (1 - beta^k) * b2."""
    p = nn.Parameter(torch.zeros(30, 30))
    beta, k = 0.9, 3
    opt = FAMOptimizer([p], lr=0.1, beta=beta, fam_start_step=0, min_size=10, interval=k, n_bands=6)
    g1, g2 = torch.randn(30, 30, generator=torch.Generator().manual_seed(1)), torch.zeros(30, 30)
    g2[:, ::2] = 1.0  # a different spectrum
    handler = make_handler("default")
    b1, b2 = (handler.analyze(g.reshape(1, -1), 6)[0] for g in (g1, g2))
    for t in range(k + 1):  # analyses at steps 1 and 1 + k
        p.grad = g1 if t == 0 else g2
        opt.step()
    torch.testing.assert_close(opt.state[p]["band_ema"], beta**k * b1 + (1 - beta**k) * b2)


def test_interval_one_is_every_step():
    params = _params()
    opt = _make(params, interval=1)
    _steps(opt, params, 0, 6)
    assert opt.state[params[0]]["fam_count"] == 4  # steps 3..6


def _full_and_resumed(stop: int, total: int = 14):
    params = _params()
    full = _make(params)
    _steps(full, params, 0, total)
    first = _params()
    opt = _make(first)
    _steps(opt, first, 0, stop)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert saved["fam_steps"] == stop
    twins = [nn.Parameter(p.detach().clone()) for p in first]
    resumed = _make(twins)
    resumed.load_state_dict(saved)
    _steps(resumed, twins, stop, total - stop)
    return (params, full), (twins, resumed)


@pytest.mark.parametrize("stop", [4, 5, 7])  # inside an interval, just before an analysis, at an analysis
def test_a_run_resumed_mid_interval_equals_the_uninterrupted_run(stop):
    (params, full), (twins, resumed) = _full_and_resumed(stop)
    assert resumed._steps == full._steps == 14
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        for key, value in full.state[p].items():
            other = resumed.state[q][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key


def test_a_resume_that_restarted_the_counter_would_be_caught(monkeypatch):
    """The planted bug (the loader's counter starts again at 0) shifts the schedule and changes the run."""
    original = FAMOptimizer.load_state_dict

    def forgetful(self, state_dict):
        original(self, state_dict)
        self._steps = 0

    monkeypatch.setattr(FAMOptimizer, "load_state_dict", forgetful)
    (params, full), (twins, resumed) = _full_and_resumed(5)
    assert not all(torch.equal(full.state[p]["band_ema"], resumed.state[q]["band_ema"]) for p, q in zip(params, twins))


def test_a_checkpoint_without_the_counter_takes_the_most_steps_of_any_tensor():
    params = _params()
    opt = _make(params)
    _steps(opt, params, 0, 5)
    saved = opt.state_dict()
    del saved["fam_steps"]
    restored = _make([nn.Parameter(p.detach().clone()) for p in params])
    restored.load_state_dict(saved)
    assert restored._steps == 5


def test_no_host_sync_between_and_at_analyses():
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=32, dims=32, layers=1, heads=2, context=8)
    opt = factories.fam(model, weight_decay=0.01, analysis={**SEED_ANALYSIS, "fam_start_step": 1, "interval": 3})
    x = torch.randint(0, 32, (2, 8))
    for _ in range(8):  # analyses at steps 2, 5, 8
        opt.zero_grad()
        model(x).square().mean().backward()
        with HostSyncCatcher():
            opt.step()
            opt.band_summary()
    assert all(st["fam_count"] == 3 for st in opt.state.values() if "fam_count" in st)


@pytest.mark.parametrize("value", [0, -2, 2.5, True, "8"])
def test_a_bad_interval_is_refused_naming_the_key(value):
    model = TransformerLM(vocab_size=32, dims=16, layers=1, heads=2, context=8)
    with pytest.raises(ValueError) as err:
        factories.fam(model, analysis={**SEED_ANALYSIS, "interval": value})
    assert str(err.value) == f"optimizer.analysis.interval={value!r} must be an integer >= 1"


def test_the_options_set_the_interval():
    def interval(option):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(overrides=[f"+optimizer={option}"])
        return instantiate(cfg.optimizer)(TransformerLM(vocab_size=32, dims=16, layers=1, heads=2, context=8)).interval

    assert interval("fam_every_step") == 1
    assert interval("fam") == interval("fam_adam") == interval("fam_temporal") > 1
