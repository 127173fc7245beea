"""``trainer=fsdp``: Lightning's FSDP set up for famlab's ``TransformerLM``, and what it refuses.

* One FSDP unit per transformer :class:`~famlab.model.transformer.Block` (communication of one block
  overlaps the computation of the next), the embedding and head in the root unit.
* ``use_orig_params=True``: the optimizer sees the original, named parameters (as 1-D shards).
  Their number of dimensions before sharding is recorded on each parameter (``_famlab_ndim``,
  :func:`record_unsharded_shapes`), so weight-decay groups are decided on the unsharded shapes.
* Parameters, gradient reductions and buffers (Q-tables, loss EMAs, frequencies) stay fp32; with
  ``precision: bf16-mixed`` the matmuls run in bf16 under autocast, as on one GPU. Positions and
  rotation angles are therefore computed in fp32.
* Gradient norm clipping goes through FSDP's own ``clip_grad_norm_`` (the norm over all shards);
  ``LitLM.configure_gradient_clipping`` calls it.

Refused (one ``famlab: error`` line, before anything is written): the FAM optimizers (their
spectrum needs whole tensors), ``attention=adaptive_span`` (its ``post_step`` clamps the span
parameters, which are flattened shards here), models with scalar parameters (FSDP cannot shard
them: ``position=quaternion`` and ``projection``), and ``trainer.gradient_clip_algorithm=value``.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy, StrategyRegistry
from omegaconf import DictConfig

from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.build import target_object
from famlab.errors import ConfigError

# attention classes whose post_step writes parameters in place (FSDP holds them as flattened shards)
UNSUPPORTED_ATTENTION = {AdaptiveSpan: "adaptive_span"}


def fsdp_strategy(**kwargs):
    """Lightning ``FSDPStrategy`` with a Block wrap policy, original parameters and fp32 parameters,
    reductions and buffers (``kwargs`` go to ``FSDPStrategy``)."""
    from torch.distributed.fsdp import MixedPrecision

    from famlab.model.transformer import Block

    fp32 = torch.float32
    kwargs.setdefault("auto_wrap_policy", {Block})
    kwargs.setdefault("use_orig_params", True)
    kwargs.setdefault("mixed_precision", MixedPrecision(param_dtype=fp32, reduce_dtype=fp32, buffer_dtype=fp32))
    return FSDPStrategy(**kwargs)


def strategy_class(strategy) -> type | None:
    """The Lightning strategy class a ``trainer.strategy`` value selects: a registry name (``"fsdp"``,
    ``"ddp_spawn"``), a ``_target_`` node, or a strategy object; None for ``"auto"`` and other names
    Lightning's registry does not hold."""
    if isinstance(strategy, str):
        return StrategyRegistry[strategy]["strategy"] if strategy in StrategyRegistry else None
    if isinstance(strategy, (DictConfig, dict)):
        found = target_object(strategy, "trainer.strategy")
        return found if isinstance(found, type) else None
    return None if strategy is None else type(strategy)


def is_fsdp(strategy) -> bool:
    """True for a Lightning FSDP strategy object or a ``trainer.strategy`` value selecting one."""
    cls = strategy_class(strategy)
    return cls is not None and issubclass(cls, FSDPStrategy)


def record_unsharded_shapes(model: torch.nn.Module) -> None:
    """Note every parameter's number of dimensions before FSDP flattens it (read by the decay groups)."""
    for p in model.parameters():
        p._famlab_ndim = p.ndim


def refuse_unsupported(cfg: DictConfig, model: torch.nn.Module | None = None) -> None:
    """ConfigError for each combination ``trainer=fsdp`` cannot run correctly (``model``: the built
    model, whose scalar parameters FSDP cannot shard)."""
    strategy = cfg.trainer.get("strategy", "auto")
    if not is_fsdp(strategy):
        return
    name = "fsdp"
    optimizer = target_object(cfg.optimizer, "optimizer")
    if getattr(optimizer, "needs_whole_tensors", False):
        option = cfg.optimizer._target_.rsplit(".", 1)[-1]
        raise ConfigError(
            f"optimizer={option} needs whole parameter tensors for its frequency analysis and refuses "
            f"trainer.strategy={name}; use trainer=ddp, or optimizer=adamw|adam|sgd with trainer=fsdp"
        )
    attention = target_object(cfg.attention, "attention")
    for cls, option in UNSUPPORTED_ATTENTION.items():
        if isinstance(attention, type) and issubclass(attention, cls):
            raise ConfigError(
                f"attention={option} updates its span parameters after each step, which FSDP keeps as "
                f"flattened shards; use trainer=ddp with attention={option}"
            )
    scalars = [n for n, p in (model.named_parameters() if model is not None else []) if p.ndim == 0]
    if scalars:
        raise ConfigError(
            f"trainer=fsdp cannot shard the scalar parameter {scalars[0]}; "
            f"use trainer=ddp, or position=rotary|compact|none with trainer=fsdp"
        )
    if cfg.trainer.get("gradient_clip_algorithm") == "value":
        raise ConfigError(
            "trainer.gradient_clip_algorithm=value is not supported with trainer=fsdp; "
            "use norm clipping (trainer.gradient_clip_val) or null"
        )
