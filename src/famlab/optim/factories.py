"""Optimizer factories used by ``conf/optimizer/*.yaml`` (``_partial_: true``).

The loop builds the optimizer with :func:`for_model` (``for_model(instantiate(cfg.optimizer))(model)``):

* a factory here takes the model, builds parameter groups and returns a ready ``torch.optim.Optimizer``:
  ``adamw`` / ``adam`` / ``sgd`` over two groups, ``decay`` (every parameter with ``ndim >= 2`` outside norm
  layers, i.e. matmul weights and embeddings, as in nanoGPT) and ``no_decay`` (norms, biases, any 1-D or
  scalar parameter); ``fam``: the handler-aware groups of :func:`famlab.optim.groups.get_parameter_groups`
  fed to :class:`famlab.optim.fam.FAMOptimizer`. Tied weights are counted once (``named_parameters``
  deduplicates).
* a ``_target_`` that is a ``torch.optim.Optimizer`` subclass (``torch.optim.RMSprop``, ...) gets the same
  ``decay`` / ``no_decay`` groups through :func:`from_class`, its ``weight_decay`` on the ``decay`` group only.

Every bad value raises ``ValueError`` naming the config key (``optimizer.lr ...``); the checks are those of
:mod:`famlab.optim.fam_config`, each value checked in one place.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from famlab.optim.fam_config import learning_rate, nonneg, positive, unit

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)


def _check_betas(betas: Sequence[float]) -> tuple[float, float]:
    if betas is None or len(betas) != 2:
        raise ValueError(f"optimizer.betas must be a pair [beta1, beta2], got {betas!r}")
    return unit("betas[0]", betas[0]), unit("betas[1]", betas[1])


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into ``decay`` (``ndim >= 2``, not inside a norm) and ``no_decay`` groups.

    Groups carry ``names`` (parameter names as in ``named_parameters``); empty groups are dropped.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    decay, no_decay = (
        {"params": [], "names": [], "group": "decay", "weight_decay": weight_decay},
        {"params": [], "names": [], "group": "no_decay", "weight_decay": 0.0},
    )
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ndim = getattr(p, "_famlab_ndim", p.ndim)  # the shape before FSDP flattened it (famlab.lit.fsdp)
        target = decay if ndim >= 2 and id(p) not in norm_params else no_decay
        target["params"].append(p)
        target["names"].append(name)
    return [g for g in (decay, no_decay) if g["params"]]


def _params_on_cuda(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.is_cuda for p in params)


def _adam_family(cls, model, lr, weight_decay, betas, eps, fused):
    """Validated ``cls`` (Adam or AdamW) over :func:`decay_groups`; fused iff all params on CUDA when ``None``."""
    lr, weight_decay = learning_rate(lr), nonneg("weight_decay", weight_decay)
    eps, betas = positive("eps", eps), _check_betas(betas)
    fused = _params_on_cuda(model) if fused is None else bool(fused)
    kwargs = {"fused": True} if fused else {"foreach": True}
    return cls(decay_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def adamw(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    betas: Sequence[float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on ``>= 2``-D weights. ``fused=None``: fused iff all params are on CUDA."""
    return _adam_family(torch.optim.AdamW, model, lr, weight_decay, betas, eps, fused)


def adam(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.Adam:
    """Adam with coupled L2 (``weight_decay`` added to the gradient) on ``>= 2``-D weights only."""
    return _adam_family(torch.optim.Adam, model, lr, weight_decay, betas, eps, fused)


def sgd(
    model: nn.Module,
    lr: float = 0.1,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.SGD:
    """SGD (heavy-ball, optionally Nesterov) with coupled L2 on ``>= 2``-D weights only."""
    lr, weight_decay = learning_rate(lr), nonneg("weight_decay", weight_decay)
    momentum = unit("momentum", momentum)
    if nesterov and momentum == 0:
        raise ValueError("optimizer.nesterov=true needs optimizer.momentum > 0")
    return torch.optim.SGD(
        decay_groups(model, weight_decay),
        lr=lr,
        momentum=momentum,
        nesterov=bool(nesterov),
        weight_decay=0.0,
        foreach=True,
    )


def fam(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    base: str = "sgd",
    grouping: str = "per_type",
    groups: Mapping | None = None,
    analysis: Mapping | None | str = "reference",
    beta2: float | None = None,
    adam_eps: float | None = None,
    debug: bool = False,
    debug_dir: str = "./fam_debug",
    debug_interval: int = 1000,
    debug_every: int = 10,
):
    """FAMOptimizer over :func:`get_parameter_groups` with the configured group table.

    ``groups``: per-group ``alpha``, ``lr_scale``, ``wd_scale`` (default:
    :data:`famlab.optim.fam_config.REFERENCE_GROUPS`); ``analysis``: the frequency-analysis node (default
    ``"reference"``, or its alias ``"seed"``: :data:`famlab.optim.fam_config.REFERENCE_ANALYSIS`; ``None``: each
    group's constant alpha). ``base``: ``sgd`` (EMA momentum + coupled L2, the reference update) or ``adam``
    (alpha_eff drives Adam's beta1, decoupled wd; ``beta2`` / ``adam_eps`` apply to it only). See
    :mod:`famlab.optim.fam_config` for every key and its allowed values. ``debug*``: the JSONL trace of
    :mod:`famlab.optim.fam_debug` (off in the YAMLs; ``+optimizer.debug=true`` turns it on).
    """
    from famlab.optim.fam import FAMOptimizer
    from famlab.optim.fam_config import REFERENCE_ANALYSIS, REFERENCE_GROUPS, choice, fam_arguments
    from famlab.optim.groups import get_parameter_groups

    groups = REFERENCE_GROUPS if groups is None else _plain(groups)
    named = isinstance(analysis, str) and analysis in ("reference", "seed")  # "seed": alias of "reference"
    analysis = REFERENCE_ANALYSIS if named else _plain(analysis)
    table, kwargs, scalars = fam_arguments(lr, weight_decay, base, groups, analysis, beta2, adam_eps)
    single = choice("grouping", grouping, "grouping") == "single"
    param_groups = get_parameter_groups(
        model, lr=scalars["lr"], weight_decay=scalars["weight_decay"], table=table, single=single
    )
    return FAMOptimizer(
        param_groups,
        lr=scalars["lr"],
        weight_decay=scalars["weight_decay"],
        debug=debug,
        debug_dir=debug_dir,
        debug_interval=debug_interval,
        debug_every=debug_every,
        **kwargs,
    )


fam.needs_whole_tensors = True  # what FAMOptimizer.needs_whole_tensors says, read from the config's _target_


def _plain(node):
    """A DictConfig (Hydra passes nested nodes as such) as plain containers; anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node


def from_class(cls: type[torch.optim.Optimizer], model: nn.Module, *args, weight_decay=None, **settings):
    """``cls(decay_groups(model, weight_decay), *args, **settings)`` for a ``torch.optim.Optimizer`` subclass.

    ``weight_decay`` (default: the class's own default, else 0) applies to the ``decay`` group; ``no_decay``
    gets 0. A class that takes no ``weight_decay`` (nor ``**kwargs``) gets groups without it. ``lr`` is checked here, every other
    setting by the class itself; config lists arrive as tuples (``betas``).
    """
    accepted = inspect.signature(cls).parameters
    if "weight_decay" in accepted or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        default = accepted["weight_decay"].default if "weight_decay" in accepted else 0.0
        groups = decay_groups(model, nonneg("weight_decay", default if weight_decay is None else weight_decay))
    elif weight_decay is not None:
        raise ValueError(f"optimizer.weight_decay: {cls.__module__}.{cls.__qualname__} takes no weight_decay")
    else:
        groups = [{k: v for k, v in g.items() if k != "weight_decay"} for g in decay_groups(model, 0.0)]
    settings = {k: _plain_setting(v) for k, v in settings.items()}
    if "lr" in settings:
        settings["lr"] = learning_rate(settings["lr"])
    return cls(groups, *args, **settings)


def for_model(factory: Callable) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The callable that builds the optimizer from the model, for an instantiated ``conf/optimizer`` node.

    A partial whose target is a ``torch.optim.Optimizer`` subclass becomes ``from_class(cls, model, ...)``;
    anything else (a factory of this module, your own factory) is returned unchanged and called with the model.
    """
    func = factory.func if isinstance(factory, functools.partial) else factory
    if isinstance(func, type) and issubclass(func, torch.optim.Optimizer):
        args, keywords = (factory.args, factory.keywords) if isinstance(factory, functools.partial) else ((), {})
        return functools.partial(from_class, func, *args, **keywords)
    return factory


def _plain_setting(value):
    """A config value as a plain Python value; a list becomes a tuple (``betas``)."""
    value = _plain(value)
    return tuple(value) if isinstance(value, list) else value
