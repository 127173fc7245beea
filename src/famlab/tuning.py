"""Stage 2 of the two-stage lr protocol reads stage 1's winners from a file, never by hand.

Stage 1 is an lr sweep; ``famlab compare <stage-1 sweep> --emit-best <file>`` writes each arm's
best lr, its grid and whether the winner lies at the grid's edge, and the val-loss target
(``famlab.report.best``). A stage-2 experiment points at that file and takes its values through
two config resolvers::

    experiment_meta:
      best_from: docs/claims/tuned/claim_convergence_cpu.yaml
      target: ${famlab.best_target:${experiment_meta.best_from}}
    optimizer:
      lr: ${famlab.best_lr:${experiment_meta.best_from},${hydra:runtime.choices.optimizer}}
    hydra:
      callbacks:
        best_from: {_target_: famlab.tuning.BestFromCheck}

:class:`BestFromCheck` runs before Hydra creates the run or sweep directory: a missing file, an
arm of the sweep without a winner, a winner at the edge of its grid or a missing target ends the
process with one ``famlab: error:`` line and exit status 2. A relative path is taken from the
current directory, else from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from famlab.errors import ConfigError
from famlab.paths import REPO_ROOT

KEY = "experiment_meta.best_from"


def best_path(path: str) -> Path:
    """``path`` as given if it exists, else relative to the repository root."""
    given = Path(str(path)).expanduser()
    if given.is_absolute() or given.exists():
        return given
    return REPO_ROOT / given


def load_best(path: str) -> dict:
    """The emitted file as a dict; ConfigError when it is missing or not such a file."""
    file = best_path(path)
    if not file.is_file():
        raise ConfigError(
            f"{KEY}: {path} does not exist; run stage 1, then famlab compare <stage-1 sweep dir> --emit-best {path}"
        )
    try:
        best = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, OSError) as exc:
        raise ConfigError(f"{KEY}: {path} is not readable YAML: {exc}".splitlines()[0]) from exc
    if not isinstance(best, dict) or not isinstance(best.get("arms"), dict) or "arm_key" not in best:
        raise ConfigError(f"{KEY}: {path} has no arm_key/arms; write it with famlab compare --emit-best")
    return best


def arm_lr(best: dict, arm: str, path: str) -> float:
    """The tuned lr of ``arm``; ConfigError when the arm is absent, has no winner or sits at an edge."""
    key, arms = best["arm_key"], best["arms"]
    entry = arms.get(str(arm))
    if entry is None:
        raise ConfigError(
            f"{KEY}: {path} has no tuned lr for {key}={arm} (it has {', '.join(map(str, arms))}); "
            f"add {key}={arm} to stage 1"
        )
    grid = "[" + ", ".join(f"{x:g}" for x in entry.get("grid") or []) + "]"
    if entry.get("lr") is None:
        raise ConfigError(f"{KEY}: {path}: {key}={arm} has no completed stage-1 run on grid {grid}")
    if entry.get("at_edge"):
        where = {"low": "lowest", "high": "highest"}.get(entry.get("edge"), "only")
        raise ConfigError(
            f"{KEY}: {path}: {key}={arm}: best lr {entry['lr']:g} is the {where} point of its "
            f"grid {grid}; widen that grid in stage 1, rerun it and --emit-best again"
        )
    return float(entry["lr"])


def target_value(best: dict, path: str) -> float:
    target = best.get("target")
    if not isinstance(target, dict) or target.get("value") is None:
        why = best.get("target_note") or "stage 1 named no target arm"
        raise ConfigError(f"{KEY}: {path} has no target: {why}")
    return float(target["value"])


def best_lr(path: str, arm: str) -> float:
    """Resolver ``${famlab.best_lr:<file>,<arm>}``."""
    return arm_lr(load_best(path), str(arm), str(path))


def best_target(path: str) -> float:
    """Resolver ``${famlab.best_target:<file>}``."""
    return target_value(load_best(path), str(path))


def swept_values(config: DictConfig, key: str) -> list[str]:
    """The values ``key`` takes in this run or sweep: the sweep axis (command line over the
    sweeper's params, as Hydra does), else the group choice or the config value."""
    from famlab.report.runs import sweep_grid

    task = [str(t) for t in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.to_container(OmegaConf.select(config, "hydra.sweeper.params", default={}) or {})
    for item in sweep_grid(task, params):
        name, _, value = item.partition("=")
        if name.lstrip("+~").strip() == key:
            return [v.strip() for v in value.split(",")]
    choice = OmegaConf.select(config, f"hydra.runtime.choices.{key}", default=None)
    if choice is None:
        choice = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    return [] if choice is None else [str(choice)]


def check_best_from(config: DictConfig) -> None:
    """Every arm this run or sweep will launch has a tuned lr away from its grid's edges, and the
    target exists when ``experiment_meta.target`` reads it; ConfigError otherwise."""
    path = OmegaConf.select(config, KEY, default=None)
    if not path:
        return
    best = load_best(str(path))
    for arm in swept_values(config, str(best["arm_key"])):
        arm_lr(best, arm, str(path))
    meta = OmegaConf.to_container(config.experiment_meta, resolve=False)
    if "famlab.best_target" in str(meta.get("target", "")):
        target_value(best, str(path))


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object


class BestFromCheck(Callback):
    """Hydra callback: :func:`check_best_from` before the run or sweep directory is created."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        try:
            check_best_from(config)
        except ConfigError as exc:
            print(f"famlab: error: {exc}", file=sys.stderr)
            sys.exit(2)
