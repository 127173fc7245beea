"""NonFiniteGuard's row buffer: steps beyond ``check_every`` without a check, half-precision
gradients, steps that are not consecutive, and the first bad step kept over later ones."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from famlab.lit.nonfinite import NonFiniteError, NonFiniteGuard


class _Module(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).to(dtype)
        self.device = torch.device("cpu")
        self._last_loss = None

    def step(self, bad: str | None = None) -> None:
        self.zero_grad()
        loss = self.net(torch.ones(2, 4, dtype=self.net[0].weight.dtype)).float().pow(2).mean()
        loss.backward()
        self._last_loss = loss.detach()
        if bad == "grad":
            self.net[1].weight.grad[0, 0] = float("nan")
        elif bad == "loss":
            self._last_loss = torch.tensor(float("inf"))


def _run(module, guard, plan: dict[int, str], steps) -> SimpleNamespace:
    trainer = SimpleNamespace(global_step=0, default_root_dir=".")
    guard.setup(trainer, module)
    for step in steps:
        trainer.global_step = step
        module.step(plan.get(step))
        guard.on_before_optimizer_step(trainer, module, None)
    return trainer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_first_bad_step_survives_a_full_buffer_and_later_bad_steps(dtype):
    guard = NonFiniteGuard(check_every=2)
    trainer = _run(_Module(dtype), guard, {4: "grad", 6: "loss"}, range(9))  # 9 steps, never checked
    with pytest.raises(NonFiniteError, match=r"at step 5; first parameter with a non-finite gradient: net.1.weight"):
        guard.check(trainer)


def test_a_bad_loss_alone_names_no_parameter():
    guard = NonFiniteGuard(check_every=4)
    trainer = _run(_Module(), guard, {2: "loss"}, range(3))
    with pytest.raises(NonFiniteError, match=r"at step 3; the loss was not finite \(gradients were\)"):
        guard.check(trainer)


def test_steps_that_are_not_consecutive_are_named_right():
    guard = NonFiniteGuard(check_every=4)
    trainer = _run(_Module(), guard, {17: "grad"}, [3, 9, 17])
    with pytest.raises(NonFiniteError, match=r"at step 18;"):
        guard.check(trainer)


def test_clean_steps_pass_every_check_and_hand_their_norms_to_clipping():
    module, guard = _Module(), NonFiniteGuard(check_every=3)
    trainer = _run(module, guard, {}, range(7))
    guard.check(trainer)
    expected = {id(p): torch.linalg.vector_norm(p.grad) for p in module.parameters()}
    assert module._grad_norms.keys() == expected.keys()
    assert all(torch.equal(module._grad_norms[k], v) for k, v in expected.items())
