"""Checks of the command line that must pass before Hydra or famlab writes anything.

Hydra creates a job's output directory before the task function runs, so an ``out_root`` the
process cannot create would end in a ``FileNotFoundError`` / ``NotADirectoryError`` /
``PermissionError`` traceback with a half-made tree. :class:`Preflight` is a Hydra callback
(``conf/hydra/default.yaml``) that runs at the start of a run or sweep, checks the directory it
will create and the ``seed``, and ends the process with one line and exit status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from famlab.errors import ConfigError


def check_seed(seed: Any) -> int:
    """``seed`` as an int; a ConfigError for anything that is not a whole number."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer (e.g. seed=0), got {seed!r}")
    return seed


def check_creatable(path: str | Path, key: str = "out_root") -> Path:
    """The nearest existing ancestor of ``path`` must be a writable directory (nothing is created)."""
    target = Path(os.path.expanduser(str(path))).absolute()
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{key}: cannot create {target}: {probe} is a file, not a directory; choose another {key}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{key}: cannot create {target}: {probe} is not writable by this user; choose a writable {key}"
        )
    return target


def _fail(error: ConfigError) -> None:
    print(f"famlab: error: {error}", file=sys.stderr)
    sys.exit(2)


class Preflight(Callback):
    """Hydra callback: check the ``seed`` setting and the run (or sweep) directory before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "sweep")

    @staticmethod
    def _check(config: DictConfig, mode: str) -> None:
        try:
            directory = OmegaConf.select(config, f"hydra.{mode}.dir")
            check_seed(config.get("seed", 0))  # a swept seed (seed=0,1) is checked per job by train.run
            if directory is not None:
                check_creatable(directory, "out_root" if "out_root" in config else f"hydra.{mode}.dir")
        except ConfigError as e:
            _fail(e)
