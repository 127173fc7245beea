"""``python train.py ...``: compose the config, validate it, train, write the run directory.

Run directory (``outputs/<task>/runs/<run_name>`` or ``.../multiruns/<sweep>/<job>``)::

    config.yaml  overrides.yaml  summary.json  metrics.csv  tokenizer.json  train.log  famlab.lock
    checkpoints/last.ckpt  checkpoints/best-step=N.ckpt  plots/  wandb/
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from famlab import allowlist
from famlab.build import build_datamodule, build_model, build_optimization, instantiate, target_object
from famlab.console import quiet_third_party
from famlab.data.tokenizers import save_tokenizer
from famlab.errors import ConfigError
from famlab.lit.checkpoint_io import AtomicCheckpointIO
from famlab.lit.durable import FULL_ERRNOS, DiskFull, Reserve
from famlab.lit.fsdp import fsdp_strategy, is_fsdp
from famlab.lit.interrupt import Preempted, preempted_message
from famlab.lit.module import LitLM
from famlab.lit.nonfinite import NonFiniteError
from famlab.lit.recorder import RunRecorder
from famlab.lit.summary import hardware, update_summary
from famlab.paths import CONF_DIR
from famlab.preflight import check_seed
from famlab.run_dir import RunContext, prepare_run, wandb_kwargs
from famlab.run_lock import RunLock, RunLocked, is_rank_zero

log = logging.getLogger("famlab")


def run(cfg: DictConfig, ctx: RunContext | None = None) -> dict:
    """Train one configuration; returns the final summary. Raises ConfigError on bad input."""
    ctx = ctx or RunContext.from_hydra(cfg)
    ctx.refuse_bad_launch(cfg)
    quiet_third_party(bool(cfg.get("verbose", False)))
    allowlist.check(cfg, allowlist.extra_prefixes(cfg))  # before anything is instantiated
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    pl.seed_everything(check_seed(cfg.seed), workers=True, verbose=False)
    dm = build_datamodule(cfg)
    model = build_model(cfg, vocab_size=dm.vocab_size)
    optimizer, scheduler = build_optimization(cfg, model)
    lock = RunLock(ctx.run_dir) if is_rank_zero() else None  # global rank 0 owns the run directory
    checkpoint_io, reserve = AtomicCheckpointIO(), Reserve(ctx.run_dir)
    try:
        ckpt_path = prepare_run(cfg, ctx, model, lock)  # validated and locked: from here on files are written
        if lock is not None:
            reserve.create()
        return _train(cfg, ctx, dm, model, optimizer, scheduler, ckpt_path, checkpoint_io)
    except BaseException as e:
        if isinstance(e, RunLocked) or not is_disk_full(e):
            raise
        reserve.release()  # gives the summary room
        step = checkpoint_io.last_step if checkpoint_io.last_step is not None else ctx.resumed_step
        where = getattr(e, "filename", None) or f"a file in {ctx.run_dir}"
        message = (
            f"no space left on device while writing {where}; "
            + (f"the last good checkpoint is step {step}" if step is not None else "no checkpoint was written yet")
            + "; free space and rerun with resume=auto"
        )
        if lock is not None:
            try:
                update_summary(ctx.run_dir, status="failed", error=message)
            except OSError as again:
                log.error("summary.json could not be updated either: %s", again)
        raise RunFailed(message) from e
    finally:
        reserve.release()
        if lock is not None:
            lock.release()


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in FULL_ERRNOS)


class RunFailed(RuntimeError):
    """The run stopped on its environment (a full disk); ``summary.json`` says ``failed`` with this message."""


def _train(
    cfg: DictConfig,
    ctx: RunContext,
    dm,
    model,
    optimizer,
    scheduler,
    ckpt_path: str | None,
    checkpoint_io: AtomicCheckpointIO,
) -> dict:
    save_tokenizer(dm.tokenizer, ctx.run_dir / "tokenizer.json")
    file_log = logging.FileHandler(ctx.run_dir / "train.log")
    logging.getLogger().addHandler(file_log)
    accumulate = int(cfg.trainer.get("accumulate_grad_batches", 1))
    tokens_per_step = int(dm.batch_size) * int(dm.context) * accumulate
    target = OmegaConf.select(cfg, "experiment_meta.target")
    update_summary(
        ctx.run_dir,
        status="running",
        error=None,
        experiment=str(cfg.task_name),
        choices=ctx.choices,
        overrides=ctx.overrides,
        seed=int(cfg.seed),
        lr=float(cfg.optimizer.get("lr", float("nan"))),
        n_parameters=model.num_parameters(),
        context=int(dm.context),
        hardware=hardware(),
        data=dm.meta,
        max_steps=int(cfg.trainer.max_steps),
        run_dir=str(ctx.run_dir),
        verdict_rule=OmegaConf.to_container(cfg.experiment_meta.verdict)
        if OmegaConf.select(cfg, "experiment_meta.verdict")
        else None,
    )
    if cfg.get("compile"):
        model = torch.compile(model)
    module = LitLM(
        model,
        optimizer,
        scheduler,
        total_steps=int(cfg.trainer.max_steps),
        bpc_factor=dm.bpc_factor(),
        log_every_n_steps=int(cfg.log_every_n_steps),
        tokens_per_step=tokens_per_step,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    recorder = RunRecorder(ctx.run_dir, target=target, tokens_per_step=tokens_per_step)
    callbacks = [cb for cb in (instantiate(c, "callbacks") for c in (cfg.callbacks or {}).values() if c) if cb]
    callbacks.append(recorder)  # checkpoints: callbacks.model_checkpoint (conf/callbacks/model_checkpoint.yaml)
    loggers = []
    for name, node in (cfg.logger or {}).items():
        if node:
            target = target_object(node, "logger")
            is_wandb = isinstance(target, type) and issubclass(target, pl.loggers.WandbLogger)
            extra = wandb_kwargs(cfg, ctx) if is_wandb else {}
            loggers.append(instantiate(node, "logger", **extra))
            if is_wandb:  # wandb gets the resolved config as a plain dict, plus the group choices to group by
                loggers[-1].log_hyperparams({"choices": ctx.choices, **OmegaConf.to_container(cfg, resolve=True)})
    strategy = {"strategy": fsdp_strategy()} if is_fsdp(cfg.trainer.get("strategy", "auto")) else {}
    trainer = instantiate(
        cfg.trainer,
        "trainer",
        callbacks=callbacks,
        logger=loggers,
        plugins=[checkpoint_io],
        default_root_dir=str(ctx.run_dir),
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks),
        **strategy,
    )
    status, error = "failed", None
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        finish_on_last_step(trainer, module, dm, recorder, ctx)
        status = "pruned" if any(getattr(cb, "pruned", False) for cb in callbacks) else "completed"
    except Preempted as e:
        status, error = "interrupted", str(e)
        log.warning("%s", e)
    except NonFiniteError as e:
        status, error = "diverged", str(e)
        raise
    except BaseException as e:
        if preempted_message(e) is None:
            error = f"{type(e).__name__}: {e}"
            raise
        status, error = "interrupted", preempted_message(e)  # a spawned rank's Preempted
        log.warning("%s", error)
    finally:
        logging.getLogger().removeHandler(file_log)
        for lg in loggers:
            if isinstance(lg, pl.loggers.WandbLogger):
                import wandb

                wandb.finish(exit_code=0 if status == "completed" else 1)
        if trainer.is_global_zero:
            # with ddp_spawn the training happened in child processes, which wrote the fields
            spawned = trains_in_child_processes(trainer)
            fields = recorder.fields(trainer, module) if recorder.history or not spawned else {}
            last = ctx.run_dir / "checkpoints" / "last.ckpt"
            try:
                summary = update_summary(
                    ctx.run_dir,
                    status=status,
                    error=error,
                    **fields,
                    last_checkpoint=str(last) if last.exists() else None,
                )
            except OSError as write_error:
                if status in ("completed", "interrupted"):
                    raise
                log.error("summary.json could not be written (%s); the run's own error follows", write_error)
    return summary


def finish_on_last_step(trainer, module, dm, recorder: RunRecorder, ctx: RunContext) -> None:
    """Validate and checkpoint the final step when max_steps is not a multiple of the
    validation interval, so the summary's final loss and last.ckpt are the end of training."""
    if trains_in_child_processes(trainer) or trainer.global_step == 0:
        return  # ddp_spawn: the trained weights live in the child processes
    if recorder.history and recorder.history[-1]["step"] == trainer.global_step:
        return
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.save_checkpoint(ctx.run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # the full state


def trains_in_child_processes(trainer) -> bool:
    """True when the strategy trains in processes it starts itself and this one only waits (``ddp_spawn``,
    ``ddp_fork``: Lightning's multiprocessing launcher); this process's module then holds no training."""
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    return isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    ctx = RunContext.from_hydra(cfg)
    try:
        summary = run(cfg, ctx)
    except RunLocked as e:  # another process owns the run directory: write nothing into it
        if ctx.multirun:
            log.error("job %s skipped: %s", ctx.run_dir, e)
            return None
        print(f"famlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as e:  # summary.json already says "failed" with this message
        log.error("run %s failed: %s", ctx.run_dir, e)
        if ctx.multirun:
            return None
        print(f"famlab: error: {e}", file=sys.stderr)
        sys.exit(1)
    except ConfigError as e:
        ctx.discard_if_empty()
        if ctx.multirun:  # record the failure, let the other jobs of the sweep finish
            ctx.record_failure(e)
            log.error("job %s failed: %s", ctx.run_dir, e)
            return None
        print(f"famlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as e:  # summary.json already says "diverged"
        log.error("run %s diverged: %s", ctx.run_dir, e)
        if ctx.multirun:
            return None
        print(f"famlab: run diverged: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        if ctx.multirun:  # recorded as failed with its error; the sweep goes on
            ctx.record_failure(e)
            log.exception("job %s failed", ctx.run_dir)
            return None
        raise
    print(f"run directory: {ctx.run_dir}")
    print(
        f"final val/loss: {summary.get('final_val_loss')}  (best {summary.get('best_val_loss')} "
        f"at step {summary.get('best_val_step')}, {summary.get('wall_time_s', 0):.0f} s)"
    )
    return summary.get(str(cfg.get("optimized_metric") or "final_val_loss"))


def main() -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hydra_main()


if __name__ == "__main__":
    main()
