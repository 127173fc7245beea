"""Python API for notebooks and tests.

>>> cfg = compose(["model=tiny", "optimizer=adamw"])
>>> model = build_model(cfg)              # forward: token ids [B, T] -> logits [B, T, vocab]
>>> summary = train(cfg, "outputs/nb/run1")
>>> run = load_run("outputs/nb/run1")     # .cfg .model .tokenizer .datamodule .summary
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from famlab import allowlist, build
from famlab.errors import ConfigError
from famlab.paths import CONF_DIR


def compose(overrides: Sequence[str] = (), config_name: str = "train", run_dir: str | Path | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides, as ``python train.py`` would.

    The Hydra runtime is registered too (output dir = ``run_dir``, default ``outputs/api/<time>``),
    so every ``${hydra:...}`` interpolation resolves.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(run_dir or Path(cfg.out_root) / "api" / str(cfg.run_name)).resolve())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def _without_hydra(cfg: DictConfig) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def build_model(cfg: DictConfig, vocab_size: int | None = None) -> torch.nn.Module:
    """The configured ``TransformerLM`` (vocabulary from the data unless given)."""
    return build.build_model(cfg, vocab_size=vocab_size)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Run one training job in-process (no Hydra launcher); returns the summary."""
    from famlab.run_dir import RunContext
    from famlab.train import run

    if run_dir is not None:
        OmegaConf.set_readonly(cfg.hydra, False)
        cfg.hydra.runtime.output_dir = str(Path(run_dir).resolve())
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    ctx = RunContext(
        run_dir=Path(cfg.hydra.runtime.output_dir),
        overrides=list(cfg.hydra.overrides.task),
        choices={
            k: v
            for k, v in cfg.hydra.runtime.choices.items()
            if not k.startswith("hydra") and k != "local" and v is not None
        },
    )
    ctx.existed = ctx.run_dir.exists() and any(ctx.run_dir.iterdir())
    return run(_without_hydra(cfg), ctx)


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: DictConfig
    model: torch.nn.Module
    tokenizer: Any
    datamodule: Any
    summary: dict
    checkpoint: Path


def load_run(path: str | Path, which: str = "best", map_location: str = "cpu", allow: Sequence[str] = ()) -> LoadedRun:
    """Rebuild a run's data module and model from its ``config.yaml`` and load its weights
    (``which`` = best | last, or a checkpoint path) with ``weights_only=True``. Eval mode.

    Every ``_target_`` in ``config.yaml`` is checked against :mod:`famlab.allowlist` before anything
    is built; ``allow`` (and ``FAMLAB_ALLOW_TARGETS``) adds trusted module prefixes, the
    directory's own ``allow_targets`` is ignored."""
    from famlab.lit.summary import read_summary

    run_dir = Path(path)
    if run_dir.is_file():
        run_dir = run_dir.parent.parent
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"run={run_dir}: no config.yaml (not a famlab run directory)")
    cfg = OmegaConf.load(cfg_file)
    # the directory's own allow_targets is not trusted: only the caller's and FAMLAB_ALLOW_TARGETS
    with open_dict(cfg):
        cfg[allowlist.CONFIG_KEY] = list(allow)
    try:
        allowlist.check(cfg, allowlist.extra_prefixes(cfg))
    except ConfigError as e:
        raise ConfigError(f"run={run_dir}: config.yaml: {e}") from None
    ckpt_dir = run_dir / "checkpoints"
    if Path(which).is_file():
        ckpt = Path(which)
    else:
        best = sorted(ckpt_dir.glob("best*.ckpt"), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0))
        ckpt = best[-1] if which == "best" and best else ckpt_dir / "last.ckpt"
    if not ckpt.is_file():
        raise ConfigError(f"run={run_dir}: no checkpoint in {ckpt_dir}")
    dm = build.build_datamodule(cfg)
    model = build.build_model(cfg, vocab_size=dm.vocab_size)
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=True)["state_dict"]
    except Exception as e:  # noqa: BLE001
        raise ConfigError(
            f"checkpoint {ckpt} could not be read ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    weights = {
        k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in state.items() if k.startswith("model.")
    }
    model.load_state_dict(weights)
    model.eval()
    return LoadedRun(run_dir, cfg, model, dm.tokenizer, dm, read_summary(run_dir), ckpt)
