"""FAMOptimizer: frequency-adaptive momentum, device-resident and sync-free.

Per parameter ``p`` with gradient ``g`` (faithful default ``base="sgd"``, ``spectrum="spatial"``):

1. ``step += 1``; coupled L2 ``g <- g + wd*p``.
2. FAM is active iff ``step > fam_start_step`` and ``numel(p) > min_size`` (both strict, Python ints).
3. Sample ``g`` (numel > 10000: 64 random rows x 64 random cols for >= 2-D, 1000 random entries for 1-D; else
   all of ``g``) with a seeded ``torch.Generator`` on the param's device; band energies of ``|rfft|``
   (:mod:`famlab.optim.frequency`), EMA ``H <- beta*H + (1-beta)*b`` (first active step: ``H <- b``).
4. ``alpha_eff = handler.momentum(H, alpha)``; ``m <- alpha_eff*m + (1-alpha_eff)*g``; ``p <- p - lr*m``.

Extensions (options of the same class, not in the seed):

* ``base="adam"``: alpha_eff is Adam's beta1; second moment ``v`` (``beta2``), bias correction
  ``1 - prod_t(alpha_eff_t)`` (exact for a time-varying beta1) and ``1 - beta2^t``, decoupled weight decay.
* ``spectrum="temporal"``: every eligible tensor keeps a ring buffer (``window`` steps) of one cheap statistic,
  the gradient's projection on a fixed seeded sparse random +-1 direction (256 entries); the rfft runs over
  TIME, so high bands measure step-to-step oscillation (what the seed's README described). Every band layout
  then covers the Nyquist bin (period-2 flips), which the spatial layouts drop as the seed does.
* ``analysis=False``: each group's constant alpha (ablation of the analysis).

``step()`` runs with autocast disabled for the parameters' device types, so a call inside a user's
``torch.autocast`` region computes the spectrum, band energies and update in the parameters' dtype.

Differs from the seed: no host sync (band EMAs, alpha_eff, generator state are tensors in optimizer state,
the gating uses Python int step counters), seeded sampling instead of the global CPU RNG, batched rfft and
band sums (one matmul per group and signal length), no swallowed exceptions, ``layer_boost`` is stored but
unused (as in the seed), debug output is JSON Lines (:mod:`famlab.optim.fam_debug`).
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict

import torch

from famlab.optim import fam_config as cfg
from famlab.optim.fam_debug import FAMDebugWriter
from famlab.optim.frequency import HANDLERS, make_handler
from famlab.optim.groups import add_handlers_to_groups
from famlab.optim.sampling import spatial_samples, temporal_probe

_FLOAT32_STATE = ("band_ema", "alpha_eff", "beta1_prod", "trace")


#: Settings of the whole optimizer (kept in ``defaults``, so every param group and ``state_dict`` carries them).
OPTIMIZER_KEYS = (
    "base",
    "spectrum",
    "analysis",
    "attention_layout",
    "beta2",
    "adam_eps",
    "window",
    "seed",
    "layer_boost",
)


#: Checks of the per-group values a param group may set for itself (``n_bands`` depends on the handler).
_GROUP_CHECKS = {
    "lr": cfg.learning_rate,
    "weight_decay": lambda v: cfg.nonneg("weight_decay", v),
    "alpha": lambda v: cfg.unit("alpha", v),
    "beta": lambda v: cfg.unit("beta", v),
    "eps": lambda v: cfg.positive("eps", v),
    "fam_start_step": lambda v: cfg.integer("fam_start_step", v, 0),
    "min_size": lambda v: cfg.integer("min_size", v, 0),
}


def _same(a, b) -> bool:
    """``a`` is ``b`` or equals it as a plain number (a tensor-valued group setting always counts as its own)."""
    return a is b or (not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and a == b)


class FAMOptimizer(torch.optim.Optimizer):
    """Frequency-Adaptive Momentum. Group keys (``lr, weight_decay, alpha, beta, eps, n_bands, handler,
    fam_start_step, min_size``) override the constructor values, as in the seed; the settings in
    :data:`OPTIMIZER_KEYS` hold for the whole optimizer. Every hyperparameter lives in ``defaults`` and the
    param groups, so ``state_dict()``, pickling and ``deepcopy`` carry them."""

    needs_whole_tensors = True  # the spectrum is taken over each whole parameter (trainer=fsdp refuses it)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        alpha: float = 0.9,
        beta: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        n_bands: int = 8,
        fam_start_step: int = 100,
        layer_boost: bool = True,
        min_size: int = 256,
        debug: bool = False,
        debug_dir: str = "./fam_debug",
        debug_interval: int = 1000,
        *,
        base: str = "sgd",
        spectrum: str = "spatial",
        analysis: bool = True,
        attention_layout: str = "high",
        beta2: float = 0.999,
        adam_eps: float = 1e-8,
        window: int = 64,
        seed: int = 0,
        debug_every: int = 10,
    ):
        defaults = dict(
            lr=cfg.learning_rate(lr),
            alpha=cfg.unit("alpha", alpha),
            beta=cfg.unit("beta", beta),
            eps=cfg.positive("eps", eps),
            weight_decay=cfg.nonneg("weight_decay", weight_decay),
            n_bands=n_bands,  # checked per group: the smallest count depends on the group's handler
            handler="default",
            fam_start_step=cfg.integer("fam_start_step", fam_start_step, 0),
            min_size=cfg.integer("min_size", min_size, 0),
            base=cfg.choice("base", base, "base"),
            spectrum=cfg.choice("spectrum", spectrum, "spectrum"),
            analysis=bool(analysis),
            attention_layout=cfg.choice("attention_layout", attention_layout, "attention_layout"),
            beta2=cfg.unit("beta2", beta2),
            adam_eps=cfg.positive("adam_eps", adam_eps),
            window=cfg.integer("window", window, 4),
            seed=cfg.integer("seed", seed, 0),
            layer_boost=layer_boost,
        )  # layer_boost: stored, unused (as in the seed)
        cfg.integer("debug_interval", debug_interval, 1)
        super().__init__(add_handlers_to_groups(params), defaults)
        _refuse_sharded(self.param_groups)
        self._handlers = {name: make_handler(name, attention_layout) for name in HANDLERS}
        self._generators: dict[str, torch.Generator] = {}
        self._by_device: dict[torch.device, torch.Generator] = {}
        self._pending_rng: dict[str, torch.Tensor] = {}
        self._probes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._steps = 0
        self.debug = bool(debug)
        self._debug = (
            FAMDebugWriter(
                debug_dir,
                debug_interval,
                debug_every,
                dict(
                    lr=lr,
                    alpha=alpha,
                    beta=beta,
                    n_bands=n_bands,
                    fam_start_step=fam_start_step,
                    base=base,
                    spectrum=spectrum,
                    analysis=analysis,
                ),
            )
            if debug
            else None
        )

    def __getattr__(self, name: str):
        """``opt.base``, ``opt.spectrum``, ... read the optimizer-wide settings from ``defaults``."""
        if name in OPTIMIZER_KEYS and "defaults" in self.__dict__:
            return self.__dict__["defaults"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def add_param_group(self, param_group: dict) -> None:
        g = param_group
        value = lambda key: g.get(key, self.defaults.get(key))  # noqa: E731
        for key in OPTIMIZER_KEYS:
            if key in g and g[key] != self.defaults[key]:
                raise ValueError(
                    f"optimizer.{key}={g[key]!r} is a setting of the whole optimizer "
                    f"({self.defaults[key]!r}); param group {g.get('group', len(self.param_groups))!r} "
                    "cannot change it"
                )
        for key, check in _GROUP_CHECKS.items():  # the defaults were checked in __init__
            if key in g and not _same(g[key], self.defaults[key]):
                check(g[key])
        handler = cfg.choice("handler", g.get("handler", "default"), "handler")
        cfg.integer(
            "n_bands",
            value("n_bands"),
            2 if handler == "attention" and self.defaults["attention_layout"] == "legacy" else 1,
        )
        g.setdefault("group", f"group{len(self.param_groups)}")
        if not isinstance(g.get("params"), (list, tuple)):
            g["params"] = [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])
        g.setdefault("names", [f"{g['group']}.{j}" for j in range(len(g["params"]))])
        super().add_param_group(param_group)

    def __getstate__(self) -> dict:
        """Pickle / deepcopy: the base class keeps defaults (every setting), state and param_groups; add the
        step counter and the sampling generators' states."""
        state = super().__getstate__()
        state["_steps"], state["debug"] = self._steps, self.debug
        state["fam_rng"] = {**self._pending_rng, **{k: g.get_state() for k, g in self._generators.items()}}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        rng = state.pop("fam_rng", {})
        super().__setstate__(state)
        self._handlers = {name: make_handler(name, self.attention_layout) for name in HANDLERS}
        self._generators, self._by_device, self._pending_rng, self._probes = {}, {}, _by_type(rng), {}
        self._debug = None  # a copy does not write the original's debug file

    # ------------------------------------------------------------------ RNG and state
    def _generator(self, device: torch.device) -> torch.Generator:
        """The seeded sampling generator of ``device``, saved under :func:`rng_key` (``"cuda"``, not ``"cuda:1"``),
        so a checkpoint written by one rank restores on a rank with another device index."""
        gen = self._by_device.get(device)
        if gen is None:
            key = rng_key(device)
            if key in self._generators:  # a second device of the same type in one process keeps its index
                key = str(device)
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if key in self._pending_rng:
                gen.set_state(self._pending_rng.pop(key))
            self._generators[key] = gen
            self._by_device[device] = gen
        return gen

    def _probe(self, p: torch.Tensor, ordinal: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed sparse random direction of ``p`` (indices, signs), cached; see :func:`temporal_probe`."""
        probe = self._probes.get(id(p))
        if probe is None:
            probe = self._probes[id(p)] = temporal_probe(p.numel(), self.seed, ordinal, p.device)
        return probe

    def _init_state(self, p: torch.Tensor, st: dict, group: dict) -> None:
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if self.base == "adam":
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["beta1_prod"] = torch.ones((), dtype=torch.float32, device=p.device)
        if self.analysis and p.numel() > group["min_size"]:
            st["fam_count"] = 0
            st["band_ema"] = torch.zeros(group["n_bands"], dtype=torch.float32, device=p.device)
            st["alpha_eff"] = torch.full((), float(group["alpha"]), dtype=torch.float32, device=p.device)
            if self.spectrum == "temporal":
                st["trace"] = torch.zeros(self.window, dtype=torch.float32, device=p.device)

    def state_dict(self) -> dict:
        sd = super().state_dict()
        rng = dict(self._pending_rng)
        rng.update({key: gen.get_state() for key, gen in self._generators.items()})
        sd["fam_rng"] = rng
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("fam_rng", {})
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # checkpoints from before the settings lived in the groups
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self.defaults.update({key: self.param_groups[0][key] for key in OPTIMIZER_KEYS})  # the saved settings
        self._handlers = {name: make_handler(name, self.attention_layout) for name in HANDLERS}
        for st in self.state.values():  # base class casts state to the param dtype; FAM statistics stay fp32
            for key in _FLOAT32_STATE:
                if key in st:
                    st[key] = st[key].float()
        self._pending_rng = {k: v.detach().cpu().to(torch.uint8) for k, v in _by_type(rng).items()}
        for key, gen in self._generators.items():
            if key in self._pending_rng:
                gen.set_state(self._pending_rng.pop(key))

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._steps += 1
        ordinal = 0
        with _autocast_off(self.param_groups):  # a user's autocast region would run the band matmul in bf16
            for group in self.param_groups:
                self._group_step(group, ordinal)
                ordinal += len(group["params"])
        if self._debug is not None:
            self._debug.maybe_flush(self._steps)
        return loss

    def _group_step(self, group: dict, ordinal: int) -> None:
        params, grads, states, names, ords = [], [], [], [], []
        for j, (name, p) in enumerate(zip(group["names"], group["params"])):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"FAMOptimizer does not support sparse gradients ({name}); use sparse=False")
            st = self.state[p]
            if not st:
                self._init_state(p, st, group)
            st["step"] += 1
            params.append(p), grads.append(p.grad), states.append(st), names.append(name), ords.append(ordinal + j)
        if not params:
            return
        if self.base == "sgd" and group["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        eligible = [i for i, st in enumerate(states) if "band_ema" in st]
        if self.spectrum == "temporal" and eligible:
            self._record_traces(eligible, params, grads, states, ords)
        active = [i for i in eligible if states[i]["step"] > group["fam_start_step"]]
        adaptive = self._analyze(group, active, grads, states) if active else {}
        self._apply(group, params, grads, states, adaptive)
        if self._debug is not None:
            for i in active:
                st = states[i]
                self._debug.record(
                    st["step"], names[i], group["group"], group["handler"], st["alpha_eff"], st["band_ema"]
                )

    def _record_traces(self, eligible, params, grads, states, ords) -> None:
        """Write this step's projection of each eligible gradient into its ring buffer (slot ``(step-1) % W``)."""
        stats, slots = [], []
        for i in eligible:
            idx, sign = self._probe(params[i], ords[i])
            stats.append(torch.dot(grads[i].reshape(-1).index_select(0, idx).float(), sign))
            slots.append(states[i]["trace"].select(0, (states[i]["step"] - 1) % self.window))
        torch._foreach_copy_(slots, stats)

    def _analyze(self, group, active, grads, states) -> dict[int, torch.Tensor]:
        """Band EMAs and alpha_eff of the active params; returns ``{index: alpha_eff 0-dim tensor}``."""
        handler = self._handlers[group["handler"]]
        if self.spectrum == "temporal":
            signals = [states[i]["trace"] for i in active]
        else:
            signals = spatial_samples([grads[i] for i in active], self._generator)
        buckets: dict[tuple, list] = defaultdict(list)  # same signal length and device -> one batched rfft
        for i, signal in zip(active, signals):
            buckets[(signal.shape[0], signal.device)].append((i, signal))
        out: dict[int, torch.Tensor] = {}
        for items in buckets.values():
            idx = [i for i, _ in items]
            bands = handler.analyze(
                torch.stack([s for _, s in items]), group["n_bands"], group["eps"], nyquist=self.spectrum == "temporal"
            )  # [P, n]
            emas = [states[i]["band_ema"] for i in idx]
            smoothed = torch.stack(emas).lerp_(bands, 1.0 - group["beta"])
            for row, i in enumerate(idx):
                if states[i]["fam_count"] == 0:  # first analysis: H <- b (seed)
                    smoothed[row].copy_(bands[row])
                states[i]["fam_count"] += 1
            alpha_eff = handler.momentum(smoothed, float(group["alpha"]))  # [P]
            torch._foreach_copy_(emas, list(smoothed.unbind(0)))
            torch._foreach_copy_([states[i]["alpha_eff"] for i in idx], list(alpha_eff.unbind(0)))
            out.update(zip(idx, alpha_eff.unbind(0)))
        return out

    def _apply(self, group, params, grads, states, adaptive: dict[int, torch.Tensor]) -> None:
        lr, alpha, wd = group["lr"], float(group["alpha"]), group["weight_decay"]
        ms = [st["exp_avg"] for st in states]
        fixed = [i for i in range(len(params)) if i not in adaptive]
        ada = list(adaptive)
        if fixed:
            torch._foreach_lerp_([ms[i] for i in fixed], [grads[i] for i in fixed], 1.0 - alpha)
        if ada:
            weights = torch._foreach_neg([adaptive[i] for i in ada])
            torch._foreach_add_(weights, 1.0)  # 1 - alpha_eff
            weights = [w if w.dtype == ms[i].dtype else w.to(ms[i].dtype) for w, i in zip(weights, ada)]
            torch._foreach_lerp_([ms[i] for i in ada], [grads[i] for i in ada], weights)
        if self.base == "sgd":
            torch._foreach_add_(params, ms, alpha=-lr)
            return
        vs, prods = [st["exp_avg_sq"] for st in states], [st["beta1_prod"] for st in states]
        if wd != 0:
            torch._foreach_mul_(params, 1.0 - lr * wd)
        torch._foreach_mul_(vs, self.beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - self.beta2)
        if fixed:
            torch._foreach_mul_([prods[i] for i in fixed], alpha)
        if ada:
            torch._foreach_mul_([prods[i] for i in ada], [adaptive[i] for i in ada])
        # update = lr * (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) = lr * m / (sqrt(v) * bc1/sqrt(bc2) + eps*bc1)
        bias1 = torch._foreach_neg(prods)
        torch._foreach_add_(bias1, 1.0)  # bc1 = 1 - prod_t beta1_t (0-dim tensors)
        eps_scaled = torch._foreach_mul(bias1, self.adam_eps)
        torch._foreach_mul_(bias1, [1.0 / math.sqrt(1.0 - self.beta2 ** st["step"]) for st in states])
        denom = torch._foreach_sqrt(vs)
        torch._foreach_mul_(denom, bias1)
        torch._foreach_add_(denom, eps_scaled)
        torch._foreach_addcdiv_(params, ms, denom, value=-lr)

    # ------------------------------------------------------------------ diagnostics
    @torch.no_grad()
    def band_summary(self) -> dict[str, dict]:
        """Per group: ``handler``, ``bands`` (mean band EMA over FAM-active params, ``[n_bands]``), ``alpha_eff``
        (mean, 0-dim) as device tensors, and ``active`` (Python int). Groups without active params report
        zero bands and their constant alpha. No host sync."""
        out = {}
        for group in self.param_groups:
            states = [self.state[p] for p in group["params"] if p in self.state]
            live = [st for st in states if st.get("fam_count", 0) > 0]
            device = group["params"][0].device
            if live:
                bands = torch.stack([st["band_ema"] for st in live]).mean(0)
                alpha = torch.stack([st["alpha_eff"] for st in live]).mean()
            else:
                bands = torch.zeros(group["n_bands"], device=device)
                alpha = torch.full((), float(group["alpha"]), device=device)
            out[group["group"]] = {"handler": group["handler"], "bands": bands, "alpha_eff": alpha, "active": len(live)}
        return out

    def flush_debug(self) -> None:
        """Write buffered debug records now (no-op unless ``debug=True``)."""
        if self._debug is not None:
            self._debug.flush()


def _autocast_off(groups) -> contextlib.ExitStack:
    """Autocast disabled for every device type holding parameters (the analysis and update stay fp32)."""
    stack = contextlib.ExitStack()
    for device_type in sorted({p.device.type for g in groups for p in g["params"]}):
        stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
    return stack


def rng_key(device: torch.device) -> str:
    """Checkpoint key of a device's sampling generator: its type (``cuda:0`` and ``cuda:1`` both -> ``cuda``)."""
    return torch.device(device).type


def _by_type(rng: dict) -> dict:
    """Saved generator states with index-free keys: the lowest-index ``cuda:N`` key (older checkpoints) becomes
    ``cuda`` unless a ``cuda`` entry exists; further indexed keys stay as they are."""
    out = {k: v for k, v in rng.items() if ":" not in k}
    for key in sorted((k for k in rng if ":" in k), key=lambda k: (k.split(":")[0], int(k.split(":")[1]))):
        out[key if key.split(":")[0] in out else key.split(":")[0]] = rng[key]
    return out


def _refuse_sharded(groups) -> None:
    """FAM's spectrum needs whole tensors; FSDP hands the optimizer shards (DTensors)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - builds without distributed
        return
    if any(isinstance(p, DTensor) for g in groups for p in g["params"]):
        raise ValueError(
            "optimizer=fam needs whole parameter tensors for its frequency analysis and does not "
            "support FSDP-sharded parameters; use trainer=ddp, or optimizer=adamw|adam|sgd with trainer=fsdp"
        )
