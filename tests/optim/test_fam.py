"""FAMOptimizer: reference equivalence, gating, analysis state, minimisation, state round trip, validation."""

import copy
import io

import pytest
import torch
from torch import nn

from famlab.optim.fam import FAMOptimizer
from famlab.optim.frequency import FrequencyHandler, make_handler


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=g)) for shape in [(40, 30), (300,), (5,), (20, 3, 7)]]


def _grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _set_grads(params, grads):
    for p, gr in zip(params, grads):
        p.grad = gr.clone()


@pytest.mark.parametrize("mode", ["late_start", "analysis_off"])
def test_inactive_fam_equals_reference_ema_momentum_sgd(mode):
    params = _params()
    groups = [
        {"params": params[:2], "alpha": 0.8, "weight_decay": 0.01, "lr": 0.05},
        {"params": params[2:], "alpha": 0.95, "weight_decay": 0.0, "lr": 0.02},
    ]
    kw = dict(fam_start_step=10**9) if mode == "late_start" else dict(analysis=False, fam_start_step=0)
    opt = FAMOptimizer(groups, min_size=10, **kw)
    ref_p = [p.detach().clone() for p in params]
    ref_m = [torch.zeros_like(p) for p in params]
    hyper = [(0.8, 0.01, 0.05)] * 2 + [(0.95, 0.0, 0.02)] * 2
    for step in range(6):
        grads = _grads(params, step)
        _set_grads(params, grads)
        opt.step()
        for i, (a, wd, lr) in enumerate(hyper):
            g = grads[i] + wd * ref_p[i]
            ref_m[i] = a * ref_m[i] + (1 - a) * g
            ref_p[i] = ref_p[i] - lr * ref_m[i]
    for p, r in zip(params, ref_p):
        torch.testing.assert_close(p.detach(), r, rtol=1e-5, atol=1e-6)
    assert all("band_ema" not in opt.state[p] or opt.state[p]["fam_count"] == 0 for p in params)


def test_adam_base_without_analysis_equals_torch_adamw():
    params = _params()[:2]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    fam = FAMOptimizer(params, lr=1e-2, alpha=0.9, weight_decay=0.1, base="adam", beta2=0.95, analysis=False)
    ref = torch.optim.AdamW(twins, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8)
    for step in range(8):
        grads = _grads(params, step)
        _set_grads(params, grads)
        _set_grads(twins, grads)
        fam.step()
        ref.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_adam_bias_correction_uses_the_product_of_effective_betas():
    p = nn.Parameter(torch.zeros(1000))
    opt = FAMOptimizer([p], fam_start_step=0, base="adam", alpha=0.9, lr=1.0)
    for step in range(3):
        p.grad = torch.randn(1000, generator=torch.Generator().manual_seed(step))
        opt.step()
    st = opt.state[p]
    assert float(st["beta1_prod"]) == pytest.approx(float(st["alpha_eff"]) ** 3)  # white noise: 0.95 each step


def test_gating_is_strict_and_first_analysis_copies_bands():
    small, exact, big = nn.Parameter(torch.zeros(64)), nn.Parameter(torch.zeros(256)), nn.Parameter(torch.zeros(257))
    opt = FAMOptimizer([small, exact, big], fam_start_step=2, min_size=256, beta=0.9, lr=0.1)
    h = FrequencyHandler()
    history = []
    for step in range(4):
        grads = _grads([small, exact, big], step)
        _set_grads([small, exact, big], grads)
        opt.step()
        history.append(h.analyze(grads[2], 8))
    assert "band_ema" not in opt.state[small] and "band_ema" not in opt.state[exact]  # numel > min_size strict
    st = opt.state[big]
    assert st["step"] == 4 and st["fam_count"] == 2  # active at steps 3 and 4 only (step > 2 strict)
    expected = 0.9 * history[2] + 0.1 * history[3]  # first active step: H <- b; then EMA
    torch.testing.assert_close(st["band_ema"], expected)
    torch.testing.assert_close(st["alpha_eff"], h.momentum(expected, 0.9))


def test_adaptive_momentum_enters_the_update():
    p = nn.Parameter(torch.zeros(1000))
    opt = FAMOptimizer([p], fam_start_step=0, lr=1.0, alpha=0.9)
    g = torch.randn(1000, generator=torch.Generator().manual_seed(3))  # white: default rule -> 0.95
    p.grad = g.clone()
    opt.step()
    assert float(opt.state[p]["alpha_eff"]) == pytest.approx(0.95)
    torch.testing.assert_close(p.detach(), -(1 - 0.95) * g)


def _quadratic(opt_kwargs, steps):
    torch.manual_seed(0)
    x = nn.Parameter(torch.randn(600))
    scales = torch.linspace(0.5, 2.0, 600)
    opt = FAMOptimizer([x], fam_start_step=5, **opt_kwargs)
    f = lambda: 0.5 * (scales * x * x).sum()
    f0 = float(f().detach())
    for _ in range(steps):
        opt.zero_grad()
        f().backward()
        opt.step()
    return f0, float(f().detach())


@pytest.mark.parametrize(
    "kwargs", [dict(lr=0.2), dict(lr=0.05, base="adam"), dict(lr=0.2, spectrum="temporal", window=8)]
)
def test_minimises_quadratic(kwargs):
    f0, f1 = _quadratic(kwargs, 150)
    assert f1 < 1e-3 * f0


def test_minimises_rosenbrock():
    start = torch.stack([torch.full((512,), -1.2), torch.ones(512)])
    x = nn.Parameter(start + 0.05 * torch.randn(2, 512, generator=torch.Generator().manual_seed(0)))
    rosen = lambda: ((1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2).sum()
    opt = FAMOptimizer([x], lr=2e-3, fam_start_step=10)
    f0 = float(rosen().detach())
    for _ in range(700):
        opt.zero_grad()
        rosen().backward()
        opt.step()
    assert float(rosen().detach()) < 0.01 * f0 and opt.state[x]["fam_count"] > 600


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 48), nn.Tanh(), nn.Linear(48, 24))


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(base="adam", weight_decay=0.1), dict(spectrum="temporal", window=8), dict(analysis=False)]
)
def test_state_dict_round_trip_gives_identical_next_steps(kwargs):
    model = _model()
    opt = FAMOptimizer(model.parameters(), lr=0.01, fam_start_step=2, min_size=100, **kwargs)
    data = torch.randn(16, 24, generator=torch.Generator().manual_seed(7))

    def train(m, o, n):
        for _ in range(n):
            o.zero_grad()
            (m(data) - data).square().mean().backward()
            o.step()

    train(model, opt, 5)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2 = _model()
    model2.load_state_dict(ckpt["model"])
    opt2 = FAMOptimizer(model2.parameters(), lr=0.01, fam_start_step=2, min_size=100, **kwargs)
    opt2.load_state_dict(ckpt["opt"])
    train(model, opt, 3)
    train(model2, opt2, 3)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), model2.parameters()):
        for key, value in opt.state[a].items():
            other = opt2.state[b][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


def test_state_dict_holds_generator_state_and_steps():
    model = _model()
    opt = FAMOptimizer(model.parameters(), fam_start_step=0, min_size=100)
    model(torch.randn(2, 24)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert set(sd["fam_rng"]) == {"cpu"} and sd["fam_rng"]["cpu"].dtype == torch.uint8
    assert all(s["step"] == 1 for s in sd["state"].values())
    assert "band_ema" in sd["state"][0] and sd["state"][0]["band_ema"].dtype == torch.float32


def test_deepcopy_keeps_options_and_generator_state():
    model = _model()
    opt = FAMOptimizer(model.parameters(), fam_start_step=1, min_size=100, base="adam", window=16)
    data = torch.randn(8, 24)
    for _ in range(3):
        opt.zero_grad()
        model(data).square().mean().backward()
        opt.step()
    model2, opt2 = copy.deepcopy((model, opt))
    assert (opt2.base, opt2.window, opt2._steps) == ("adam", 16, 3)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(data).square().mean().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_band_summary():
    model = _model()
    opt = FAMOptimizer(
        [
            {"params": list(model[0].parameters()), "handler": "attention", "group": "attn", "n_bands": 12},
            {"params": list(model[2].parameters()), "group": "out"},
        ],
        fam_start_step=1,
        min_size=100,
    )
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 24)).square().mean().backward()
        opt.step()
    summary = opt.band_summary()
    assert set(summary) == {"attn", "out"} and summary["attn"]["bands"].shape == (12,)
    assert summary["attn"]["active"] == 1 and summary["attn"]["handler"] == "attention"
    weight_state = opt.state[model[2].weight]
    torch.testing.assert_close(summary["out"]["bands"], weight_state["band_ema"])  # the only active param
    torch.testing.assert_close(summary["out"]["alpha_eff"], weight_state["alpha_eff"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=0), "optimizer.lr"),
        (dict(alpha=1.0), "optimizer.alpha"),
        (dict(beta=-0.1), "optimizer.beta"),
        (dict(base="lion"), "optimizer.base"),
        (dict(spectrum="x"), "optimizer.spectrum"),
        (dict(n_bands=0), "optimizer.n_bands"),
        (dict(window=2), "optimizer.window"),
        (dict(fam_start_step=-1), "optimizer.fam_start_step"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FAMOptimizer([nn.Parameter(torch.zeros(3))], **kwargs)


def test_sparse_gradients_raise():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = FAMOptimizer(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_make_handler_layout_passthrough():
    opt = FAMOptimizer([{"params": [nn.Parameter(torch.zeros(3))], "handler": "attention"}], attention_layout="legacy")
    assert opt._handlers["attention"].band_layout() == "legacy" and make_handler("attention").band_layout() == "high"
    with pytest.raises(ValueError, match="n_bands"):
        FAMOptimizer(
            [{"params": [nn.Parameter(torch.zeros(3))], "handler": "attention", "n_bands": 1}],
            attention_layout="legacy",
        )
    copy.deepcopy(opt)  # optimizers must stay deep-copyable (Lightning/EMA utilities do this)
