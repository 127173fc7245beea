"""Closed-form schedule values at e = 0, W, E, > E and the configuration errors."""

import math

import pytest
import torch

from famlab.optim import schedulers as S


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_fam_scheduler_values():
    s0, eta, W, E = 1e-8, 1e-8, 4, 12
    lrs = _lrs(S.FAMScheduler(_opt(1.0), warmup_epochs=W, max_epochs=E), E + 5)
    assert lrs[0] == pytest.approx(s0)
    assert lrs[2] == pytest.approx(s0 + (1 - s0) * 2 / W)
    assert lrs[W] == pytest.approx(1.0)
    mid = (W + E) // 2
    assert lrs[mid] == pytest.approx(eta + (1 - eta) * (1 + math.cos(math.pi * (mid - W) / (E - W))) / 2)
    assert lrs[E] == pytest.approx(eta)
    assert lrs[E + 4] == pytest.approx(eta)  # clamped, no rise after E
    assert all(a >= b for a, b in zip(lrs[W:E], lrs[W + 1 : E + 1]))


def test_fam_scheduler_zero_warmup_and_errors():
    assert S.FAMScheduler(_opt(0.5), warmup_epochs=0, max_epochs=10).get_last_lr()[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_epochs=5 must be > warmup_epochs=5"):
        S.FAMScheduler(_opt(), warmup_epochs=5, max_epochs=5)
    with pytest.raises(ValueError, match="max_epochs"):
        S.FAMScheduler(_opt(), warmup_epochs=0, max_epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        S.FAMScheduler(_opt(), warmup_epochs=-1, max_epochs=3)


def test_fam_factory_maps_steps():
    sched = S.fam(_opt(2.0), total_steps=20, warmup_steps=5, warmup_start_lr=0.0, eta_min=0.1)
    assert isinstance(sched, S.FAMScheduler)
    assert (sched.warmup_epochs, sched.max_epochs) == (5, 20)
    lrs = _lrs(sched, 22)
    with pytest.raises(ValueError, match=r"scheduler.warmup_steps=100 must be < total_steps=20 \(trainer.max_steps\)"):
        S.fam(_opt(), total_steps=20, warmup_steps=100)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(2.0) and lrs[20] == pytest.approx(0.1)


def test_warmup_cosine_and_constant():
    lrs = _lrs(S.warmup_cosine(_opt(1.0), total_steps=10, warmup_steps=2, min_lr_ratio=0.1), 14)
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(0.1) and lrs[13] == pytest.approx(0.1)
    lrs = _lrs(S.constant(_opt(1.0), total_steps=10, warmup_steps=4), 8)
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0]) and lrs[7] == 1.0
    assert _lrs(S.constant(_opt(0.3), total_steps=5), 3) == pytest.approx([0.3] * 3)
    with pytest.raises(ValueError, match="warmup_steps=10 must be < total_steps=10"):
        S.warmup_cosine(_opt(), total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        S.warmup_cosine(_opt(), total_steps=10, min_lr_ratio=2.0)


def test_fam_scheduler2_plateau_then_cosine():
    lrs = _lrs(
        S.FAMScheduler2(
            _opt(1.0), warmup_steps=2, total_steps=10, decay_start_step=4, warmup_start_lr=0.0, eta_min=0.0
        ),
        12,
    )
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.5)
    assert lrs[2] == lrs[3] == 1.0
    assert lrs[4] == pytest.approx(1.0 + 1e-8) and lrs[10] == pytest.approx(1e-8) and lrs[11] == lrs[10]
    with pytest.raises(ValueError, match="decay_start_step"):
        S.FAMScheduler2(_opt(), warmup_steps=5, total_steps=10, decay_start_step=2)


def test_state_dict_round_trip_resumes_schedule():
    a = S.warmup_cosine(_opt(1.0), total_steps=20, warmup_steps=3)
    _lrs(a, 7)
    b = S.warmup_cosine(_opt(1.0), total_steps=20, warmup_steps=3)
    b.load_state_dict(a.state_dict())
    assert _lrs(b, 5) == pytest.approx(_lrs(a, 5))
