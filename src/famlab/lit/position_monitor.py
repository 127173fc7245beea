"""PositionMonitor: records the position schemes' learned values every N optimizer steps.

It walks ``pl_module.model.blocks[i].attn.position`` and calls each scheme's ``metrics()``
(frequency mean/std, ``rot_scale``, axis components, subspace drift; see
:mod:`famlab.position.rotary`, ``.quaternion``, ``.projection``). Values are keyed like the model's own metrics,
``"position/l{layer}.{name}"``; they are synced to the host ONCE per record (every
``every_n_steps`` optimizer steps, plus at train start and end), kept in ``self.history`` and
appended as one JSON object per record to ``<run dir>/position_values.jsonl``::

    {"step": 100, "position/l0.freq_mean": 0.125, "position/l0.rot_scale": 0.97, ...}

At train end it saves ``plots/position.png``: one panel per value name, one line per layer. The
generic diagnostics logger already sends ``model.metrics()`` to the loggers; this callback adds
the JSONL trail and the plot. The run dir is ``dirpath`` if given, else
``trainer.default_root_dir``; files are written on global rank 0 only. On resume, rows from the
restored step on are dropped first (they are recorded again), so each step appears once.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch import nn


def position_metrics(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"position/l{i}.{name}": tensor}`` from every layer's position scheme (detached device tensors)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(getattr(model, "blocks", [])):
        fn = getattr(getattr(block.attn, "position", None), "metrics", None)
        if not callable(fn):
            continue
        for key, value in fn().items():
            group, _, name = key.partition("/")
            value = value.detach().float().reshape(-1)
            if value.numel() == 1:
                out[f"{group}/l{i}.{name}"] = value
            else:
                out.update({f"{group}/l{i}.{name}{j}": v.reshape(1) for j, v in enumerate(value)})
    return out


def _full_parameters(trainer):
    """Context in which every parameter is whole: FSDP's ``summon_full_params`` under FSDP, else nothing."""
    from famlab.lit.fsdp import is_fsdp

    if not is_fsdp(getattr(trainer, "strategy", None)):
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(trainer.model, writeback=False)


class PositionMonitor(Callback):
    """Record every layer's position-scheme values every ``every_n_steps`` optimizer steps."""

    def __init__(
        self,
        every_n_steps: int = 50,
        dirpath: str | None = None,
        filename: str = "position_values.jsonl",
        plot: bool = True,
    ):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"callbacks.position_monitor.every_n_steps must be an integer >= 1, got {every_n_steps!r}")
        self.every_n_steps, self.dirpath, self.filename, self.plot = every_n_steps, dirpath, filename, plot
        self.history: list[dict] = []
        self._last_step = -1

    def run_dir(self, trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def record(self, trainer, pl_module) -> dict | None:
        """Sync the current values once, keep them in ``history`` and append them to the JSONL."""
        step = trainer.global_step
        if step == self._last_step:
            return None
        self._last_step = step
        with _full_parameters(trainer):  # FSDP: gather the shards (a collective on every rank)
            values = position_metrics(pl_module.model)
            if not values:
                return None
            flat = torch.cat([v.to(next(iter(values.values())).device) for v in values.values()]).tolist()
        row = {"step": step, **dict(zip(values, flat))}
        self.history.append(row)
        if trainer.is_global_zero:
            path = self.run_dir(trainer) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    def on_train_start(self, trainer, pl_module) -> None:
        """Record the starting values; on resume first drop rows from the checkpoint's step on."""
        path = self.run_dir(trainer) / self.filename
        if trainer.is_global_zero and path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            kept = [row for row in rows if row["step"] < trainer.global_step]
            if len(kept) != len(rows):
                path.write_text("".join(json.dumps(row) + "\n" for row in kept))
            self.history = kept + [row for row in self.history if row["step"] >= trainer.global_step]
        self.record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps so far (a Python int)
        if step and step % self.every_n_steps == 0:
            self.record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.record(trainer, pl_module)
        path = self.run_dir(trainer) / self.filename
        if self.plot and trainer.is_global_zero and path.exists():
            plot_position(path, self.run_dir(trainer) / "plots" / "position.png")


LAYER_KEY = re.compile(r"^(?P<group>[^/]+)/l(?P<layer>\d+)\.(?P<name>.+)$")


def plot_position(jsonl: Path, out: Path) -> Path | None:
    """One panel per value name (``freq_mean``, ``rot_scale``, ...), one line per layer; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(
        (json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()), key=lambda r: r["step"]
    )
    panels: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for row in rows:
        for key, value in row.items():
            match = LAYER_KEY.match(key)
            if match:
                panels.setdefault(match["name"], {}).setdefault(int(match["layer"]), []).append((row["step"], value))
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.6 * nrows), squeeze=False)
    for ax, (name, layers) in zip(axes.flat, sorted(panels.items())):
        for layer, points in sorted(layers.items()):
            ax.plot([s for s, _ in points], [v for _, v in points], marker=".", label=f"layer {layer}")
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="x-small")
    fig.suptitle("position scheme values")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
