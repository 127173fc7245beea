"""Learning-rate schedules, all closed form in the optimizer step count ``e = last_epoch``.

LitLM steps them once per optimizer step (Lightning ``interval="step"``). Factories used by
``conf/scheduler/*.yaml`` share the signature ``(optimizer, total_steps, **kwargs)``:

* :func:`warmup_cosine` - linear warm-up to the base lr, cosine down to ``min_lr_ratio * base``.
* :func:`constant` - optional linear warm-up, then the base lr.
* :func:`fam` - :class:`FAMScheduler`, FAM's schedule (warm-up from ``warmup_start_lr``, cosine to ``eta_min``).

:class:`FAMScheduler` clamps ``e`` at ``max_epochs`` (so the lr stays at ``eta_min`` after the cosine instead
of rising again), accepts ``warmup_epochs=0`` and rejects ``max_epochs <= warmup_epochs`` (a cosine phase of
zero length). :class:`FAMScheduler2` (warm-up, plateau, cosine) ends ``1e-8`` above ``eta_min`` and clamps after
``total_steps``; no config selects it. docs/provenance.md §1.4 compares both with the reference schedulers.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def _check_steps(prefix: str, total: int, warmup: int, total_key: str, warmup_key: str) -> None:
    if not isinstance(total, int) or total <= 0:
        raise ValueError(f"{prefix}.{total_key} must be a positive integer, got {total!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"{prefix}.{warmup_key} must be a non-negative integer, got {warmup!r}")


def _cosine(progress: float) -> float:
    """Cosine ramp from 1 (progress 0) to 0 (progress >= 1)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class _ClosedForm(LRScheduler):
    """Base: subclasses define ``factor(e, base_lr) -> lr``; ``get_lr`` evaluates it at ``last_epoch``."""

    def lr_at(self, e: int, base_lr: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupCosineLR(_ClosedForm):
    """``lr(e) = base*(e+1)/W`` for ``e < W``; then ``base*(r + (1-r)*cos_ramp((e-W)/(E-W)))``; flat after E."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.1,
        last_epoch: int = -1,
    ):
        _check_steps("scheduler", total_steps, warmup_steps, "total_steps (trainer.max_steps)", "warmup_steps")
        if warmup_steps >= total_steps:
            raise ValueError(
                f"scheduler.warmup_steps={warmup_steps} must be < total_steps={total_steps} (trainer.max_steps)"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"scheduler.min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, e: int, base_lr: float) -> float:
        if e < self.warmup_steps:
            return base_lr * (e + 1) / self.warmup_steps
        ramp = _cosine((e - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return base_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * ramp)


class ConstantLR(_ClosedForm):
    """``lr(e) = base*(e+1)/W`` for ``e < W``, then ``base``."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, last_epoch: int = -1):
        _check_steps("scheduler", total_steps, warmup_steps, "total_steps (trainer.max_steps)", "warmup_steps")
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        super().__init__(optimizer, last_epoch)

    def lr_at(self, e: int, base_lr: float) -> float:
        return base_lr * (e + 1) / self.warmup_steps if e < self.warmup_steps else base_lr


class FAMScheduler(_ClosedForm):
    """Warm-up and cosine: ``e < W``: ``s0 + (base-s0)*e/W``; else ``eta + (base-eta)*(1+cos(pi*(e-W)/(E-W)))/2``.

    ``e`` is clamped at ``E = max_epochs``, so the lr stays at ``eta_min`` after E. One ``step()`` per optimizer step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_epochs: int,
        max_epochs: int,
        warmup_start_lr: float = 1e-8,
        eta_min: float = 1e-8,
        last_epoch: int = -1,
    ):
        _check_steps("scheduler", max_epochs, warmup_epochs, "max_epochs", "warmup_epochs")
        if max_epochs <= warmup_epochs:
            raise ValueError(
                f"scheduler: max_epochs={max_epochs} must be > warmup_epochs={warmup_epochs} "
                "(the cosine phase would have zero length)"
            )
        if warmup_start_lr < 0 or eta_min < 0:
            raise ValueError("scheduler.warmup_start_lr and scheduler.eta_min must be >= 0")
        self.warmup_epochs, self.max_epochs = warmup_epochs, max_epochs
        self.warmup_start_lr, self.eta_min = float(warmup_start_lr), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, e: int, base_lr: float) -> float:
        e = min(e, self.max_epochs)
        if e < self.warmup_epochs:
            return self.warmup_start_lr + (base_lr - self.warmup_start_lr) * e / self.warmup_epochs
        ramp = _cosine((e - self.warmup_epochs) / (self.max_epochs - self.warmup_epochs))
        return self.eta_min + (base_lr - self.eta_min) * ramp


class FAMScheduler2(_ClosedForm):
    """Step scheduler: linear warm-up, plateau until ``decay_start_step``, cosine to ``eta_min`` (+1e-8)."""

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 1000,
        total_steps: int = 100000,
        decay_start_step: int | None = None,
        warmup_start_lr: float = 1e-6,
        eta_min: float = 1e-6,
        last_epoch: int = -1,
    ):
        _check_steps("scheduler", total_steps, warmup_steps, "total_steps", "warmup_steps")
        decay_start_step = warmup_steps if decay_start_step is None else decay_start_step
        if not warmup_steps <= decay_start_step < total_steps:
            raise ValueError(
                f"scheduler: need warmup_steps ({warmup_steps}) <= decay_start_step "
                f"({decay_start_step}) < total_steps ({total_steps})"
            )
        self.warmup_steps, self.total_steps, self.decay_start_step = warmup_steps, total_steps, decay_start_step
        self.warmup_start_lr, self.eta_min = float(warmup_start_lr), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, e: int, base_lr: float) -> float:
        e = min(e, self.total_steps)
        if e < self.warmup_steps:
            return self.warmup_start_lr + (base_lr - self.warmup_start_lr) * e / self.warmup_steps
        if e < self.decay_start_step:
            return base_lr
        ramp = _cosine((e - self.decay_start_step) / (self.total_steps - self.decay_start_step))
        return self.eta_min + (base_lr - self.eta_min) * ramp + 1e-8


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1
) -> WarmupCosineLR:
    """Factory for ``scheduler=cosine``."""
    return WarmupCosineLR(optimizer, total_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0) -> ConstantLR:
    """Factory for ``scheduler=constant``."""
    return ConstantLR(optimizer, total_steps=total_steps, warmup_steps=warmup_steps)


def fam(
    optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, warmup_start_lr: float = 1e-8, eta_min: float = 1e-8
) -> FAMScheduler:
    """Factory for ``scheduler=fam``: :class:`FAMScheduler` with ``warmup_epochs=warmup_steps`` and
    ``max_epochs=total_steps``."""
    if isinstance(total_steps, int) and isinstance(warmup_steps, int) and warmup_steps >= total_steps:
        raise ValueError(
            f"scheduler.warmup_steps={warmup_steps} must be < total_steps={total_steps} (trainer.max_steps)"
        )
    return FAMScheduler(
        optimizer, warmup_epochs=warmup_steps, max_epochs=total_steps, warmup_start_lr=warmup_start_lr, eta_min=eta_min
    )
