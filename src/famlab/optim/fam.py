"""FAMOptimizer: frequency-adaptive momentum (SGD-type EMA momentum whose coefficient each tensor chooses from
the band energies of its gradient's spectrum), device-resident and free of host syncs.

Per parameter ``p`` with gradient ``g`` (``base="sgd"``, ``spectrum="spatial"``):

1. ``step += 1``; coupled L2: the update and the analysis use ``g + wd*p``.
2. The analysis reaches ``p`` iff ``numel(p) > min_size`` and its step ``> fam_start_step`` (both strict,
   Python ints); it runs at the first such step and then every ``interval`` optimizer steps
   (:func:`famlab.optim.fam_analysis.analysis_due`).
3. At an analysis step: a seeded sample of ``g + wd*p`` (:mod:`famlab.optim.sampling`), band energies ``b [n_bands]``
   of its normalised ``|rfft|`` (:mod:`famlab.optim.frequency`), EMA ``H <- beta^interval*H +
   (1-beta^interval)*b`` (first analysis: ``H <- b``), ``alpha_eff = handler.momentum(H, alpha)``.
4. ``a = alpha_eff`` of the last analysis (the group's ``alpha`` before the first);
   ``m <- a*m + (1-a)*(g + wd*p)``; ``p <- p - lr*m`` (:mod:`famlab.optim.fam_update`).

Options of the same class: ``base="adam"`` (``alpha_eff`` as Adam's beta1, second moment, bias corrections,
decoupled decay), ``spectrum="temporal"`` (rfft over a ring buffer of one statistic per step, so high bands
measure step-to-step oscillation), ``analysis=False`` (each group's constant ``alpha``).

State: per tensor see :mod:`famlab.optim.fam_state`; the optimizer's step counter (``fam_steps``) and the
sampling generators' states (``fam_rng``) travel in ``state_dict()``, so a resumed run continues exactly, in
the middle of an analysis interval too. ``step()`` disables autocast for the parameters' device types.
"""

from __future__ import annotations

import torch

from famlab.optim import fam_config as cfg
from famlab.optim.fam_analysis import TemporalProbes, analysis_due, analyze, record_traces
from famlab.optim.fam_debug import FAMDebugWriter
from famlab.optim.fam_state import (
    FLOAT32_STATE,
    SamplingGenerators,
    autocast_off,
    by_type,
    init_state,
    refuse_sharded,
    rng_key,
)
from famlab.optim.fam_update import apply_update
from famlab.optim.frequency import HANDLERS, make_handler
from famlab.optim.groups import add_handlers_to_groups

__all__ = ["OPTIMIZER_KEYS", "FAMOptimizer", "rng_key"]

# names imported from here by older code and tests
_by_type, _refuse_sharded, _autocast_off, _FLOAT32_STATE = by_type, refuse_sharded, autocast_off, FLOAT32_STATE

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
    "interval",
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
    fam_start_step, min_size``) override the constructor values; the settings in :data:`OPTIMIZER_KEYS` hold
    for the whole optimizer. Every hyperparameter lives in ``defaults`` and the param groups, so
    ``state_dict()``, pickling and ``deepcopy`` carry them. ``interval`` (>= 1): optimizer steps between two
    analyses (1 = every step); ``layer_boost`` is accepted for signature compatibility and unused."""

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
        interval: int = 1,
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
            interval=cfg.integer("interval", interval, 1),
            layer_boost=layer_boost,
        )
        cfg.integer("debug_interval", debug_interval, 1)
        super().__init__(add_handlers_to_groups(params), defaults)
        refuse_sharded(self.param_groups)
        self._handlers = {name: make_handler(name, attention_layout) for name in HANDLERS}
        self._rng = SamplingGenerators()
        self._probes = TemporalProbes()
        self._steps = 0
        self.debug = bool(debug)
        settings = dict(lr=lr, alpha=alpha, beta=beta, n_bands=n_bands, fam_start_step=fam_start_step)
        settings.update(base=base, spectrum=spectrum, analysis=analysis, interval=interval)
        self._debug = FAMDebugWriter(debug_dir, debug_interval, debug_every, settings) if debug else None

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

    # ------------------------------------------------------------------ saving and loading
    def __getstate__(self) -> dict:
        """Pickle / deepcopy: the base class keeps defaults (every setting), state and param_groups; add the
        step counter and the sampling generators' states."""
        state = super().__getstate__()
        state["_steps"], state["debug"], state["fam_rng"] = self._steps, self.debug, self._rng.states()
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        rng = state.pop("fam_rng", {})
        super().__setstate__(state)
        self._handlers = {name: make_handler(name, self.attention_layout) for name in HANDLERS}
        self._rng, self._probes = SamplingGenerators(rng), TemporalProbes()
        self._debug = None  # a copy does not write the original's debug file

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["fam_rng"] = self._rng.states()
        sd["fam_steps"] = self._steps
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        rng = state_dict.pop("fam_rng", {})
        steps = state_dict.pop("fam_steps", None)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # checkpoints from before the settings lived in the groups
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        self.defaults.update({key: self.param_groups[0][key] for key in OPTIMIZER_KEYS})  # the saved settings
        self._handlers = {name: make_handler(name, self.attention_layout) for name in HANDLERS}
        for st in self.state.values():  # base class casts state to the param dtype; FAM statistics stay fp32
            for key in FLOAT32_STATE:
                if key in st:
                    st[key] = st[key].float()
        if steps is None:  # checkpoints without the counter: the most steps any tensor took
            steps = max((st.get("step", 0) for st in self.state.values()), default=0)
        self._steps = int(steps)
        self._rng.load(rng)

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._steps += 1
        ordinal = 0
        with autocast_off(self.param_groups):  # a user's autocast region would run the band matmul in bf16
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
                init_state(
                    p, st, group, base=self.base, analysis=self.analysis, spectrum=self.spectrum, window=self.window
                )
            st["step"] += 1
            params.append(p), grads.append(p.grad), states.append(st), names.append(name), ords.append(ordinal + j)
        if not params:
            return
        wd = group["weight_decay"] if self.base == "sgd" else 0.0  # coupled L2: the analysis sees g + wd*p
        eligible = [i for i, st in enumerate(states) if "band_ema" in st]
        temporal = self.spectrum == "temporal"
        if temporal and eligible:
            record_traces(eligible, params, grads, states, ords, self._probes, self.seed, self.window, wd)
        start = group["fam_start_step"]
        if eligible and analysis_due(self._steps, start, self.interval):
            due = [i for i in eligible if states[i]["step"] > start]
            if due:
                analyze(
                    self._handlers[group["handler"]],
                    group,
                    due,
                    grads,
                    states,
                    params=params,
                    wd=wd,
                    temporal=temporal,
                    interval=self.interval,
                    generator_for=lambda device: self._rng.get(device, self.seed),
                )
        adaptive = {i: states[i]["alpha_eff"] for i in eligible if states[i]["fam_count"] > 0}
        apply_update(group, params, grads, states, adaptive, base=self.base, beta2=self.beta2, adam_eps=self.adam_eps)
        if self._debug is not None:
            for i in adaptive:
                st = states[i]
                self._debug.record(
                    st["step"], names[i], group["group"], group["handler"], st["alpha_eff"], st["band_ema"]
                )

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
