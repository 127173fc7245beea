"""The run directory's life cycle: where it is, resume decisions, config records, wandb identity.

Nothing is written until the configuration has been validated (``prepare_run`` is called after
the data, model and optimizer were built), and an existing run's checkpoints are never
overwritten by a fresh run: that needs ``resume=auto`` or another ``run_name``.
``prepare_run`` also takes the run directory's lock (:mod:`famlab.run_lock`) before its first
write and writes Hydra's ``.hydra/`` records itself, so a second process started into a directory
that a live process holds is refused having written nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from famlab.errors import ConfigError
from famlab.lit.summary import update_summary
from famlab.run_lock import LOCK_NAME, RunLock, RunLocked

SPAWNING_STRATEGIES = (
    "ddp",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "fsdp",
    "deepspeed",
)


@dataclass
class RunContext:
    run_dir: Path
    multirun: bool = False
    choices: dict = field(default_factory=dict)
    overrides: list = field(default_factory=list)
    launcher: str = ""
    existed: bool = False
    hydra_files: bool = False  # write Hydra's .hydra/ records (Hydra itself writes none: output_subdir null)
    locked_out: bool = False  # another process holds the run directory: never touch it
    resumed_step: int | None = None  # global step of the checkpoint resumed from
    owned: bool = False  # this process took the run directory over (prepare_run passed its checks)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> RunContext:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            run_dir = Path(cfg.get("run_dir") or Path(cfg.out_root) / str(cfg.task_name) / "runs" / str(cfg.run_name))
            return cls(run_dir=run_dir, existed=run_dir.exists())
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        choices = {
            k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and k != "local" and v is not None
        }
        ctx = cls(
            run_dir=run_dir,
            multirun=hc.mode == RunMode.MULTIRUN,
            choices=choices,
            overrides=list(hc.overrides.task),
            launcher=str(hc.launcher.get("_target_", "")),
            hydra_files=True,
        )
        ctx.existed = any(p.name != ".hydra" for p in run_dir.iterdir()) if run_dir.exists() else False
        return ctx

    def refuse_bad_launch(self, cfg: DictConfig) -> None:
        """Hydra multirun + a strategy that re-launches the command line re-runs the whole sweep
        in every child process (and hangs under joblib or pytest): refuse it up front, and a global
        batch the processes cannot split evenly."""
        strategy = str(cfg.trainer.get("strategy", "auto"))
        if self.multirun and strategy in SPAWNING_STRATEGIES and not self.launcher_is_submitit():
            raise ConfigError(
                f"trainer.strategy={strategy} re-launches the command line and breaks Hydra multirun; "
                f"use trainer=ddp_cpu (ddp_spawn) locally or launcher=slurm (one task per GPU) on a cluster"
            )
        devices, nodes, batch = cfg.trainer.get("devices"), cfg.trainer.get("num_nodes", 1), cfg.data.get("batch_size")
        if isinstance(devices, int) and devices > 0 and isinstance(nodes, int) and isinstance(batch, int):
            if batch % (devices * nodes):  # else each spawned process fails with a traceback
                raise ConfigError(
                    f"data.batch_size={batch} must be divisible by the {devices * nodes} processes "
                    f"(trainer.devices={devices} x trainer.num_nodes={nodes})"
                )

    def launcher_is_submitit(self) -> bool:
        """True when Hydra's launcher (``launcher``: its ``_target_``) is hydra-submitit-launcher's, which
        starts every job as a process of its own (one task per GPU under SLURM)."""
        if not self.launcher:
            return False
        try:
            from hydra._internal.utils import _locate

            from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

            launcher = _locate(self.launcher)
        except ImportError:  # the plugin is not installed, or the target does not import: not submitit
            return False
        return isinstance(launcher, type) and issubclass(launcher, BaseSubmititLauncher)

    def discard_if_empty(self) -> None:
        """Remove a run directory this invocation created but never wrote to."""
        if self.existed or self.locked_out or not self.run_dir.exists():
            return
        if all(p.name in (".hydra", LOCK_NAME) for p in self.run_dir.iterdir()):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def record_failure(self, error: BaseException) -> None:
        """Mark the job ``failed`` in its summary.json, unless the directory holds an earlier run that
        this process never took over (a refused resume must leave that run's record as it was)."""
        if self.locked_out or (self.existed and not self.owned):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        update_summary(
            self.run_dir,
            status="failed",
            error=f"{type(error).__name__}: {error}",
            choices=self.choices,
            overrides=self.overrides,
        )


def _find_checkpoint(path: Path) -> Path:
    p = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not p.is_file():
        raise ConfigError(f"resume: no checkpoint at {p}")
    return p


def check_checkpoint(path: Path, model=None) -> dict:
    """Open ``path`` as Lightning will (``weights_only=True``; memory-mapped, so tensors are not
    read) before anything is written: a truncated, corrupt or code-carrying file, or one whose
    tensors do not fit ``model`` (another model config), is a ConfigError."""
    import zipfile

    import torch

    try:
        if not zipfile.is_zipfile(path):  # what a truncated file looks like (mmap would say only "Invalid argument")
            raise OSError("truncated, or not a PyTorch zip archive")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            f"resume: checkpoint {path} could not be read safely ({type(e).__name__}: {why}); "
            f"nothing was written - pass resume=<another checkpoint> or remove it"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ConfigError(f"resume: {path} is not a Lightning checkpoint (no state_dict); nothing was written")
    if model is not None:
        _check_fits(path, state["state_dict"], model)
    return state


def _drop_stale_best(ckpt_dir: Path, state: dict) -> None:
    """Remove ``best-*.ckpt`` files the resumed checkpoint does not know: a run killed between
    ModelCheckpoint's writes leaves older (or not yet recorded) best files behind, and
    ``load_run(which="best")`` must find only the real one."""
    keep = set()
    for key, cb in (state.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(cb, dict):
            keep |= {Path(str(p)).name for p in [cb.get("best_model_path"), *(cb.get("best_k_models") or {})] if p}
    for stale in ckpt_dir.glob("best-*.ckpt"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)


def _check_fits(path: Path, saved: dict, model) -> None:
    def norm(k: str) -> str:
        return k.replace("_orig_mod.", "").removeprefix("model.")

    def shape(v) -> list | str:  # extra state (get_extra_state) may be any object
        return list(v.shape) if hasattr(v, "shape") else type(v).__name__

    saved = {norm(k): shape(v) for k, v in saved.items() if k.startswith("model.")}
    wanted = {norm(k): shape(v) for k, v in model.state_dict().items()}
    wrong = [f"{k}: checkpoint {saved[k]}, model {s}" for k, s in wanted.items() if k in saved and saved[k] != s]
    missing, extra = sorted(wanted.keys() - saved.keys()), sorted(saved.keys() - wanted.keys())
    if wrong or missing or extra:
        what = (
            wrong[:1]
            + [f"missing from the checkpoint: {missing[:3]}"] * bool(missing)
            + [f"not in the model: {extra[:3]}"] * bool(extra)
        )
        raise ConfigError(
            f"resume: checkpoint {path} was written by another model configuration "
            f"({'; '.join(what)}; {len(wrong) + len(missing) + len(extra)} tensors differ); resume with "
            f"the config it was trained with, or start a fresh run; nothing was written"
        )


def prepare_run(cfg: DictConfig, ctx: RunContext, model=None, lock: RunLock | None = None) -> str | None:
    """Decide what to resume from (the checkpoint must load safely and fit ``model``), take
    ``lock`` on the run directory, then write the config records. Returns the checkpoint path or
    None. Raises :class:`RunLocked` (nothing written) when another live process holds the directory."""
    if lock is not None:
        try:
            lock.refuse_if_held()  # before any other check, so the message names the live owner
        except RunLocked:
            ctx.locked_out = True
            raise
    last = ctx.run_dir / "checkpoints" / "last.ckpt"
    resume = cfg.get("resume")
    if resume in (None, "", "null", "none"):
        if last.exists():
            raise ConfigError(
                f"run directory {ctx.run_dir} already has checkpoints; pass resume=auto to continue "
                f"it, or choose another run_name (nothing was overwritten)"
            )
        ckpt = None
    elif resume == "auto":
        ckpt = str(last) if last.exists() else None
    else:
        ckpt = str(_find_checkpoint(Path(str(resume)).expanduser()))
    state = check_checkpoint(Path(ckpt), model) if ckpt is not None else None
    ctx.resumed_step = int(state.get("global_step", 0)) if state is not None else None
    if lock is not None:
        try:
            lock.acquire()
        except RunLocked:
            ctx.locked_out = True
            raise
    ctx.owned = True
    if resume == "auto":
        for stray in last.parent.glob("*.tmp"):  # half-written by a process killed while saving
            stray.unlink(missing_ok=True)
    if state is not None and Path(ckpt).resolve() == last.resolve():
        _drop_stale_best(last.parent, state)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    if ctx.hydra_files:
        _write_hydra_records(cfg, ctx)
    (ctx.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (ctx.run_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(ctx.overrides)))
    (ctx.run_dir / "config_tree.txt").write_text(_print_tree(cfg))
    (ctx.run_dir / "git.txt").write_text(_git_state())
    return ckpt


def _write_hydra_records(cfg: DictConfig, ctx: RunContext) -> None:
    """``.hydra/{config,hydra,overrides}.yaml`` as Hydra would write them, but only once this process
    holds the run directory (Hydra's own copy is off: it would be written before any lock)."""
    from hydra.core.hydra_config import HydraConfig

    out = ctx.run_dir / ".hydra"
    out.mkdir(exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        (out / "hydra.yaml").write_text(OmegaConf.to_yaml(HydraConfig.instance().cfg))
    (out / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(ctx.overrides)))


def wandb_kwargs(cfg: DictConfig, ctx: RunContext) -> dict:
    """A persistent run id (so resume re-attaches), tags from the choices, config as a plain dict."""
    id_file = ctx.run_dir / "wandb_id.txt"
    if not id_file.exists():
        id_file.write_text(secrets.token_hex(4))
    mode = cfg.logger.wandb.get("mode", "offline")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or Path("~/.netrc").expanduser().exists()):
        mode = "offline"  # never prompt for a login
    tags = [
        f"{g}={c}"
        for g, c in sorted(ctx.choices.items())
        if g in ("optimizer", "position", "attention", "model", "data")
    ]
    return {
        "id": id_file.read_text().strip(),
        "resume": "allow",
        "mode": mode,
        "tags": tags + [str(t) for t in cfg.get("tags") or []],
        "name": f"{cfg.task_name}/{ctx.run_dir.name}",
        "settings": _wandb_settings(),
    }


def _wandb_settings():
    import wandb

    return wandb.Settings(silent=True, console="off", disable_git=True, x_disable_stats=True)


def _git_state() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5).stdout
        return f"{sha}\n{'dirty' if dirty.strip() else 'clean'}\n{dirty}"
    except (OSError, subprocess.SubprocessError):
        return "unknown\n"


def _print_tree(cfg: DictConfig) -> str:
    """Print the resolved config as a rich tree (rank 0) and return its plain text."""
    from rich.console import Console
    from rich.tree import Tree

    tree = Tree("config")
    for key, value in cfg.items():
        branch = tree.add(f"[bold]{key}")
        if isinstance(value, DictConfig):
            branch.add(OmegaConf.to_yaml(value, resolve=True).rstrip())
        else:
            branch.add(str(value))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        Console().print(tree)
    console = Console(record=True, width=120, file=open(os.devnull, "w"))
    console.print(tree)
    return console.export_text()
