"""Which ``_target_`` values famlab may instantiate.

A config names the objects it builds by dotted path (``_target_``), and a config can come from a
run directory somebody else wrote. Before anything is instantiated the whole config is walked
(nested nodes, ``_args_`` lists, partials) and every ``_target_`` must start with an allowed
prefix; anything else is refused with one line naming the key and the target.

Allowed by default: famlab's own modules (except its helpers that write files: ``famlab.lit.summary``,
``famlab.data.tokenizers.save_tokenizer`` and the entry-point modules), ``torch.optim`` (optimizers and
``torch.optim.lr_scheduler``), and the Lightning classes a training config uses
(``lightning.pytorch.Trainer``, ``lightning.pytorch.callbacks``, ``lightning.pytorch.loggers``,
``lightning.pytorch.strategies``, ``lightning.pytorch.profilers`` for ``debug=profiler``) and ``optuna.pruners`` (``hparams_search=optuna_pruned``). Extend it for your own code with the top-level config key
``allow_targets`` (a list of module or class prefixes, e.g. ``allow_targets=[mylab.models]``) or the
environment variable ``FAMLAB_ALLOW_TARGETS`` (comma-separated). A run directory's own
``allow_targets`` is not honoured when it is loaded (``load_run``, ``famlab sample``, ``famlab
evaluate``): a directory cannot widen the list for itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig

from famlab.errors import ConfigError

ENV_VAR = "FAMLAB_ALLOW_TARGETS"
CONFIG_KEY = "allow_targets"
DEFAULT = (
    "famlab",
    "torch.optim",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
    "lightning.pytorch.strategies",
    "lightning.pytorch.profilers",
    "optuna.pruners",
)
# famlab functions that write to a path they are given, and the entry points: never config objects
FAMLAB_REFUSED = (
    "famlab.lit.summary",
    "famlab.data.tokenizers.save_tokenizer",
    "famlab.run_dir",
    "famlab.train",
    "famlab.api",
    "famlab.cli",
    "famlab.compare",
    "famlab.evaluate",
    "famlab.sample",
    "famlab.report",
    "famlab.build",
    "famlab.allowlist",
    "famlab.paths",
)


def _under(target: str, prefix: str) -> bool:
    prefix = prefix.strip().rstrip(".")
    return bool(prefix) and (target == prefix or target.startswith(prefix + "."))


def extra_prefixes(cfg: Any = None) -> list[str]:
    """Prefixes added by ``FAMLAB_ALLOW_TARGETS`` and, when ``cfg`` is given, its ``allow_targets``."""
    extra = [p for p in os.environ.get(ENV_VAR, "").split(",") if p.strip()]
    if isinstance(cfg, DictConfig) and cfg.get(CONFIG_KEY):
        extra += [str(p) for p in cfg[CONFIG_KEY]]
    return extra


def allowed(target: str, extra: Iterable[str] = ()) -> bool:
    if any(_under(target, p) for p in extra):
        return True
    if any(_under(target, p) for p in FAMLAB_REFUSED):
        return False
    return any(_under(target, p) for p in DEFAULT)


def _children(node: Any) -> Iterator[tuple[Any, Any]]:
    """(key, resolved child) pairs; a child whose interpolation does not resolve is left out (Hydra
    could not build it either). Resolving matters: ``${oc.create:...}`` can hold a whole node."""
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            try:
                yield i, node[i]
            except Exception:  # noqa: BLE001
                continue
    elif isinstance(node, DictConfig):
        for key in list(node.keys()):
            try:
                yield key, node[key]
            except Exception:  # noqa: BLE001
                continue
    else:
        yield from (node.items() if isinstance(node, dict) else enumerate(node))


def targets(node: Any, path: str = "", skip: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every ``(key path, _target_ value)`` in ``node`` (DictConfig, ListConfig, dict or list), depth
    first; the keys in ``skip`` are not walked (at this level only)."""
    is_map = isinstance(node, (DictConfig, dict))
    if is_map and "_target_" in node:
        try:
            value = node["_target_"]
        except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve
            value = f"<unresolvable: {type(e).__name__}>"
        yield (f"{path}._target_" if path else "_target_"), value
    for key, child in _children(node):
        if key == "_target_" or key in skip or not isinstance(child, (DictConfig, ListConfig, dict, list, tuple)):
            continue
        yield from targets(child, (f"{path}.{key}" if path else str(key)) if is_map else f"{path}[{key}]")


def check(node: Any, extra: Iterable[str] = (), where: str = "", skip: tuple[str, ...] = ("hydra",)) -> None:
    """Raise ConfigError for the first ``_target_`` in ``node`` that is not allowed. ``where`` is the
    node's key path (prefixed to the keys reported); its keys in ``skip`` are not walked (``hydra``:
    Hydra's own launcher and sweeper settings, which famlab never instantiates)."""
    extra = list(extra)
    for key, target in targets(node, where, skip=skip):
        if not isinstance(target, str) or not allowed(target, extra):
            raise ConfigError(
                f"{key}={target} is not allowed: famlab instantiates only famlab's modules, torch.optim and "
                f"Lightning's Trainer, callbacks, loggers, strategies and profilers, and Optuna's pruners; if you trust it, add its module to "
                f"allow_targets=[...] or {ENV_VAR}; nothing was called"
            )
