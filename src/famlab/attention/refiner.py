"""Tabular Q-learning controller that scales the local span of ``IntegratedAttention``.

Tabular Q-learning (Watkins & Dayan 1992) with epsilon-greedy exploration,
``Refiner(states, actions, alpha, gamma, epsilon)``; every decision picks the span factor the
local branch multiplies its span by:

* The Q-table is a registered buffer ``[states, actions]`` (checkpointed, identical on every rank).
* The state id is computed on device with ``torch.bucketize`` from the span predictor mean and
  the relative trend of an EMA of the training loss since the last action (10 x 10 buckets,
  taken modulo ``states``).
* Reward = decrease of the loss EMA since the last action, minus a running baseline of such
  decreases (``baseline_decay``; 0 = no baseline), minus ``span_cost`` times the chosen span
  factor. Without the baseline every action taken early in training is rewarded simply because
  the loss falls; with it an action is rewarded for a faster-than-usual decrease. The next state
  and the reward depend on the action through training.
* Randomness (exploration and random tie-breaking) comes from a ``torch.Generator`` on the table's
  device re-seeded from ``(seed, step)`` before each decision, so it is reproducible, survives a
  checkpoint through the ``step`` buffer and is the same on every rank.
* Updates run under ``no_grad`` every ``update_every`` calls of :meth:`update` (one per optimizer
  step); the loss and the statistic are all-reduced (mean) when ``torch.distributed`` is
  initialised. No ``.item()``: everything stays on device.
* Action ``a`` maps to the span factor ``min_factor + (1 - min_factor) * a / (actions - 1)``;
  before the first decision the factor is 1 (the largest action).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

_SPAN_EDGES = torch.linspace(0.1, 0.9, 9)
_TREND_EDGES = torch.tensor([-0.05, -0.02, -0.01, -0.005, -0.001, 0.001, 0.005, 0.01, 0.02])


def _sync_after_load(module: Refiner, _incompatible_keys) -> None:
    module._host_step = int(module.step)  # one host read, at checkpoint load only


class Refiner(nn.Module):
    """Epsilon-greedy Q-learning over span factors. All state is in buffers."""

    def __init__(
        self,
        states: int,
        actions: int,
        alpha: float = 0.1,
        gamma: float = 0.9,
        epsilon: float = 0.1,
        seed: int = 0,
        update_every: int = 10,
        span_cost: float = 0.01,
        baseline_decay: float = 0.9,
        loss_decay: float = 0.9,
        min_factor: float = 0.25,
    ):
        super().__init__()
        if states < 1 or actions < 1:
            raise ValueError(f"attention.refiner.states and .actions must be >= 1, got {states}, {actions}")
        if update_every < 1:
            raise ValueError(f"attention.refiner.update_every must be >= 1, got {update_every}")
        for key, value in dict(
            alpha=alpha, gamma=gamma, epsilon=epsilon, loss_decay=loss_decay, baseline_decay=baseline_decay
        ).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"attention.refiner.{key} must lie in [0, 1], got {value}")
        if not 0.0 < min_factor <= 1.0:
            raise ValueError(f"attention.refiner.min_factor must lie in (0, 1], got {min_factor}")
        self.states, self.actions = int(states), int(actions)
        self.alpha, self.gamma, self.epsilon = float(alpha), float(gamma), float(epsilon)
        self.seed, self.update_every, self.span_cost = int(seed), int(update_every), float(span_cost)
        self.loss_decay, self.min_factor = float(loss_decay), float(min_factor)
        self.baseline_decay = float(baseline_decay)
        self.register_buffer("q_table", torch.zeros(states, actions))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("state", torch.zeros(1, dtype=torch.long))
        self.register_buffer("action", torch.full((1,), actions - 1, dtype=torch.long))
        self.register_buffer("factor", torch.ones(()))
        self.register_buffer("loss_ema", torch.zeros(()))
        self.register_buffer("ema_at_action", torch.zeros(()))
        self.register_buffer("decided", torch.zeros((), dtype=torch.bool))
        self.register_buffer("reward", torch.zeros(()))
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("has_baseline", torch.zeros((), dtype=torch.bool))
        self.register_buffer("action_counts", torch.zeros(actions))
        self.register_buffer("span_edges", _SPAN_EDGES.clone(), persistent=False)
        self.register_buffer("trend_edges", _TREND_EDGES.clone(), persistent=False)
        self._host_step = 0  # mirror of ``step`` so the update schedule needs no host read
        self._generator: torch.Generator | None = None
        self.register_load_state_dict_post_hook(_sync_after_load)

    def factor_of(self, action: torch.Tensor) -> torch.Tensor:
        """Span factor of an action id tensor, in ``[min_factor, 1]``."""
        frac = action.float() / max(self.actions - 1, 1)
        return self.min_factor + (1.0 - self.min_factor) * (frac if self.actions > 1 else torch.ones_like(frac))

    def observe(self, span_mean: torch.Tensor, trend: torch.Tensor) -> torch.Tensor:
        """State id ``[1]`` from the span predictor mean and the relative loss trend."""
        i = torch.bucketize(span_mean.reshape(1), self.span_edges)
        j = torch.bucketize(trend.reshape(1), self.trend_edges)
        return (i * (len(self.trend_edges) + 1) + j) % self.states

    def _rng(self) -> torch.Generator:
        device = self.q_table.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed * 1_000_003 + self._host_step)
        return self._generator

    def choose_action(self, state: torch.Tensor) -> torch.Tensor:
        """Epsilon-greedy action ``[1]`` in ``state`` ``[1]``; greedy ties broken at random."""
        gen, device = self._rng(), self.q_table.device
        row = self.q_table.index_select(0, state).squeeze(0)
        noise = torch.rand(self.actions, generator=gen, device=device)
        greedy = torch.where(row == row.max(), noise, -1.0).argmax().reshape(1)
        explore = torch.rand(1, generator=gen, device=device) < self.epsilon
        random_action = torch.randint(self.actions, (1,), generator=gen, device=device)
        return torch.where(explore, random_action, greedy)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, span_mean: torch.Tensor) -> None:
        """One optimizer step's observation; every ``update_every`` calls learn and act."""
        device = self.q_table.device
        obs = torch.stack([t.detach().float().reshape(()).to(device) for t in (loss, span_mean)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(obs, op=dist.ReduceOp.SUM)
            obs = obs / dist.get_world_size()
        loss_now, span_now = obs[0], obs[1]
        first = self.step == 0
        ema = self.loss_decay * self.loss_ema + (1 - self.loss_decay) * loss_now
        self.loss_ema.copy_(torch.where(first, loss_now, ema))
        self.ema_at_action.copy_(torch.where(first, self.loss_ema, self.ema_at_action))
        self.step.add_(1)
        self._host_step += 1
        if self._host_step % self.update_every:
            return
        trend = (self.loss_ema - self.ema_at_action) / self.ema_at_action.abs().clamp_min(1e-8)
        next_state = self.observe(span_now, trend)
        decrease = self.ema_at_action - self.loss_ema
        reward = decrease - self.span_cost * self.factor
        if self.baseline_decay > 0:
            learning = self.decided  # the first decision has no decrease to learn from
            base = torch.where(self.has_baseline, self.baseline, decrease)
            reward = reward - base
            updated = self.baseline_decay * base + (1 - self.baseline_decay) * decrease
            self.baseline.copy_(torch.where(learning, updated, self.baseline))
            self.has_baseline.copy_(self.has_baseline | learning)
        flat = self.state * self.actions + self.action
        table = self.q_table.view(-1)
        q_sa = table.gather(0, flat)
        target = reward + self.gamma * self.q_table.index_select(0, next_state).amax(dim=1)
        learned = q_sa + self.alpha * (target - q_sa)
        table.scatter_(0, flat, torch.where(self.decided, learned, q_sa))
        self.reward.copy_(torch.where(self.decided, reward, self.reward))
        action = self.choose_action(next_state)
        self.state.copy_(next_state)
        self.action.copy_(action)
        self.factor.copy_(self.factor_of(action).reshape(()))
        self.ema_at_action.copy_(self.loss_ema)
        self.decided.fill_(True)
        self.action_counts.index_add_(0, action, torch.ones(1, device=device, dtype=self.action_counts.dtype))

    def metrics(self) -> dict[str, torch.Tensor]:
        hist = self.action_counts / self.action_counts.sum().clamp_min(1.0)
        out = {f"refiner/action_hist_{a}": hist[a] for a in range(self.actions)}
        out.update(
            {
                "refiner/factor": self.factor.clone(),
                "refiner/epsilon": torch.tensor(self.epsilon, device=self.factor.device),
                "refiner/reward": self.reward.clone(),
                "refiner/baseline": self.baseline.clone(),
                "refiner/state": self.state[0].float(),
            }
        )
        return out


# the keys attention.refiner accepts: Refiner's arguments and ``enabled``
REFINER_KEYS = frozenset({"enabled", *inspect.signature(Refiner).parameters})


def build_refiner(refiner) -> Refiner | None:
    """The ``attention.refiner`` setting -> a :class:`Refiner` or None.

    ``None`` or ``{enabled: false, ...}`` -> None; otherwise a mapping of :class:`Refiner`'s
    arguments (``states`` and ``actions`` default to 100 and 10), unknown keys refused.
    """
    if refiner is None:
        return None
    if not isinstance(refiner, Mapping):
        raise ValueError(f"attention.refiner must be null or a mapping, got {type(refiner).__name__}")
    unknown = set(refiner) - REFINER_KEYS
    if unknown:
        raise ValueError(f"attention.refiner: unknown keys {sorted(unknown)}; allowed {sorted(REFINER_KEYS)}")
    kwargs = dict(refiner)
    if not kwargs.pop("enabled", True):
        return None
    kwargs.setdefault("states", 100)
    kwargs.setdefault("actions", 10)
    return Refiner(**kwargs)
