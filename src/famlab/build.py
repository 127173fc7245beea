"""From a composed config to live objects: data module, model, optimizer and scheduler factories.

Every ``instantiate`` goes through :func:`instantiate`, which first checks every ``_target_`` in
the node against :mod:`famlab.allowlist` (extended by the root config's ``allow_targets`` and
``FAMLAB_ALLOW_TARGETS``), then turns a failure into a one-line :class:`ConfigError` naming the
config group.
"""

from __future__ import annotations

from typing import Any

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from famlab import allowlist
from famlab.errors import ConfigError

GROUPS = ("data", "model", "optimizer", "scheduler", "position", "attention", "trainer")


def instantiate(node: Any, group: str, **kwargs) -> Any:
    root = node._get_root() if isinstance(node, DictConfig) else None
    where = node._get_full_key(None) if isinstance(node, DictConfig) and node._get_parent() is not None else group
    allowlist.check(node, allowlist.extra_prefixes(root), where=where or group)
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except ConfigError:
        raise
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, ConfigError):
            raise cause from None
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if isinstance(cause, ValueError) and msg.startswith(
            ("model.", "data.", "optimizer.", "scheduler.", "position.", "attention.", "trainer.")
        ):
            raise ConfigError(msg) from None  # the message already names its key
        raise ConfigError(f"{group}: {msg}") from None
    except Exception as e:  # noqa: BLE001 - turned into one clear line
        raise ConfigError(f"{group}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def target_object(node: Any, group: str) -> Any:
    """The class or function ``node._target_`` names, imported but not called, after the allowlist check
    :func:`instantiate` makes (so a decision about what a config builds compares objects, not names);
    None when ``node`` has no ``_target_``. An import failure is a one-line :class:`ConfigError`."""
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    if not target:
        return None
    root = node._get_root() if isinstance(node, DictConfig) else None
    allowlist.check({"_target_": target}, allowlist.extra_prefixes(root), where=group)
    from hydra._internal.utils import _locate  # hydra.utils.get_object without its error log line

    try:
        return _locate(str(target))
    except Exception as e:  # noqa: BLE001 - turned into one clear line, as instantiate does
        cause = e.__cause__ or e
        raise ConfigError(f"{group}: {type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}") from None


def build_datamodule(cfg: DictConfig):
    """Instantiate ``cfg.data`` and prepare it (load, tokenize with cache, split)."""
    dm = instantiate(cfg.data, "data")
    dm.prepare()
    return dm


def build_model(cfg: DictConfig, vocab_size: int | None = None):
    """``TransformerLM`` with the configured attention and position factories."""
    if vocab_size is None:
        vocab_size = build_datamodule(cfg).vocab_size
    attention = instantiate(cfg.attention, "attention")
    position = instantiate(cfg.position, "position")
    return instantiate(cfg.model, "model", vocab_size=vocab_size, attention=attention, position=position)


def build_optimization(cfg: DictConfig, model) -> tuple[Any, Any]:
    """Optimizer and scheduler factories, each tried once on ``model`` so bad values fail now.

    The optimizer factory takes the model (:func:`famlab.optim.factories.for_model`: a ``torch.optim``
    class as ``_target_`` gets famlab's ``decay`` / ``no_decay`` parameter groups).
    """
    from famlab.lit.fsdp import refuse_unsupported
    from famlab.optim.factories import for_model

    refuse_unsupported(cfg, model)  # trainer=fsdp: FAM, adaptive_span, scalar parameters, value clipping
    optimizer = for_model(instantiate(cfg.optimizer, "optimizer"))  # a torch.optim class gets parameter groups
    scheduler = instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    try:
        probe = optimizer(model)
        if scheduler is not None:
            scheduler(probe, total_steps=int(cfg.trainer.max_steps))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(
            msg if msg.startswith(("optimizer.", "scheduler.")) else f"optimizer/scheduler: {msg}"
        ) from None
    return optimizer, scheduler
