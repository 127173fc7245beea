"""``LitLM``: the Lightning module that trains a :class:`TransformerLM`.

It adds the mixers' ``aux_loss()`` to the loss, calls ``post_step(loss)`` after every optimizer
step, and keeps every diagnostic on device: the training loss is summed into a buffer and
logged as a mean every ``log_every_n_steps`` steps, so the step itself never syncs with the host.
Throughput and update timings are :class:`famlab.lit.step_timer.StepTimer`'s (a callback); the
module keeps the training wall time (``clock``), which checkpoints carry.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from torch import nn

from famlab.data.synthetic import IGNORE
from famlab.lit import rng_state
from famlab.lit.fsdp import is_fsdp, record_unsharded_shapes
from famlab.lit.mfu import device_peak_flops, model_flops_per_token
from famlab.lit.step_row import StepRow
from famlab.lit.step_timer import WallClock


class LitLM(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None,
        total_steps: int,
        bpc_factor: float = 1.0,
        log_every_n_steps: int = 10,
        tokens_per_step: int = 0,
        config: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.total_steps, self.bpc_factor = total_steps, bpc_factor
        self.log_every = max(1, log_every_n_steps)
        self.tokens_per_step = tokens_per_step
        if config is not None:
            self.save_hyperparameters({"config": config}, logger=False)
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._loss_count = 0
        self._grad_norms: dict[int, torch.Tensor] | None = None  # this step's gradient 2-norms (NonFiniteGuard)
        self.clock = WallClock()  # training wall time across attempts (restored on resume)
        # analytic FLOPs of a TransformerLM, on the whole model before any sharding (None: no perf/mfu)
        self.flops_per_token = model_flops_per_token(model) if hasattr(model, "blocks") else None
        record_unsharded_shapes(model)  # decay groups under FSDP follow these
        self.progress: dict[str, float] = {}  # CPU numbers for the progress bar (famlab.lit.progress)
        self._row = StepRow()  # this step's training metrics, written once to the loggers

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Norm clipping; under FSDP through the root unit's ``clip_grad_norm_`` (the norm over all shards).
        Otherwise, when NonFiniteGuard took this step's per-gradient 2-norms (``_grad_norms``), the total
        norm is built from them in the optimizer's parameter order, which gives bit for bit what
        ``clip_grad_norm_`` gives without reading every gradient a second time."""
        norms, self._grad_norms = self._grad_norms, None  # this step's only
        if gradient_clip_val and is_fsdp(self.trainer.strategy):
            self.trainer.model.clip_grad_norm_(float(gradient_clip_val))
            return
        plugin = self.trainer.precision_plugin
        if (
            norms
            and gradient_clip_val
            and gradient_clip_algorithm in (None, "norm")
            and getattr(plugin, "scaler", None) is None
            and type(plugin).clip_gradients in (Precision.clip_gradients, MixedPrecision.clip_gradients)
            and type(plugin).clip_grad_by_norm is Precision.clip_grad_by_norm
        ):
            # what clip_grad_norm_ does, with the per-gradient 2-norms NonFiniteGuard took this step
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if params and all(id(p) in norms for p in params):
                total = torch.linalg.vector_norm(torch.stack([norms[id(p)] for p in params]), 2.0)
                torch.nn.utils.clip_grads_with_norm_(params, float(gradient_clip_val), total)
                return
        self.clip_gradients(
            optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm
        )

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean next-token cross-entropy over scored positions, and the logits."""
        logits = self.model(batch["input"])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=IGNORE)
        return loss, logits

    def training_step(self, batch, batch_idx):
        record = (self.global_step + 1) % self.log_every == 0
        if record:
            self.model.set_record_stats(True)
        loss, _ = self.loss(batch)
        if record:
            self.model.set_record_stats(False)
        self._loss_sum += loss.detach()
        self._loss_count += 1
        aux = self.model.aux_loss()
        self._last_loss = loss.detach()
        return loss if aux is None else loss + aux

    def optimizer_step(self, *args, **kwargs):
        out = super().optimizer_step(*args, **kwargs)
        self.model.post_step(loss=getattr(self, "_last_loss", None))
        return out

    def on_train_start(self) -> None:
        for logger in self.trainer.loggers:  # a resumed run drops rows logged after its checkpoint
            if hasattr(logger, "truncate"):
                logger.truncate(self.global_step)
        self.clock.start()

    def peak_flops(self) -> float | None:
        """Peak bf16 FLOP/s of all devices training together (None: unknown device, e.g. a CPU); the
        global tokens/s is shared by ``world_size`` devices."""
        peak = device_peak_flops(self.device)
        return peak * self.trainer.world_size if peak else None

    def elapsed(self) -> float:
        """Wall time spent training, across resumed attempts."""
        return self.clock.elapsed()

    def log_step_metrics(self, metrics: dict) -> None:
        """Add ``metrics`` (tensors or numbers) to this training step's row of the loggers, which
        ``on_train_batch_end`` writes once (:mod:`famlab.lit.step_row`); callbacks call it from their
        ``on_train_batch_end``, which runs before the module's."""
        self._row.add(metrics)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        step = self.global_step
        if step % self.log_every == 0 and self._loss_count and step != getattr(self, "_logged_step", -1):
            self._logged_step = step
            mean_loss = self._loss_sum / self._loss_count  # a new tensor: zeroing the sum below keeps it
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self._row.add({"train/loss": mean_loss, "lr": lr, **self.model.metrics()})
            self._loss_sum.zero_()
            self._loss_count = 0
        # one host read per value on logging steps only; nothing is logged with prog_bar=True (Lightning
        # would .item() those device tensors after every batch for the rest of the epoch)
        written = self._row.write(self.trainer)
        if "train/loss" in written:  # the progress bar's number
            self.progress["loss"] = written["train/loss"]

    # --- validation ----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(3, device=self.device)  # loss sum, correct, scored

    def validation_step(self, batch, batch_idx):
        loss, logits = self.loss(batch)
        scored = batch["target"] != IGNORE
        correct = ((logits.argmax(-1) == batch["target"]) & scored).sum()
        self._val += torch.stack([loss.detach(), correct.float(), scored.sum().float()])
        self._val_batches = batch_idx + 1

    def on_validation_epoch_end(self) -> None:
        n = max(1, getattr(self, "_val_batches", 1))
        val_loss = self._val[0] / n
        # synced values live on the module's device (NCCL all-reduces device tensors only); the wall
        # time is per rank and is not synced
        self.log_dict(
            {
                "val/loss": val_loss,
                "val/bpc": val_loss * self.bpc_factor,
                "val/acc": self._val[1] / self._val[2].clamp_min(1),
            },
            prog_bar=False,
            sync_dist=True,
        )
        self.log("perf/elapsed_s", float(self.elapsed()), prog_bar=False, sync_dist=False)
        self.progress["val"] = val_loss.detach()  # read by the progress bar once per validation

    # --- exact resume: RNG states and wall time travel with the checkpoint -----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["famlab"] = {**rng_state.capture(), "elapsed_s": self.elapsed()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("famlab", {})
        rng_state.restore(state)
        self.clock.before = float(state.get("elapsed_s", 0.0))
