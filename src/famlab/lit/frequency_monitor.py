"""FrequencyMonitor: records FAM band energies and momentum every N optimizer steps (no-op for other optimizers).

Every ``every_n_steps`` optimizer steps it asks :meth:`famlab.optim.fam.FAMOptimizer.band_summary` for the
per-group mean band EMA and mean alpha_eff (device tensors), syncs them ONCE, logs them as
``fam/<group>.alpha_eff`` and (groups with FAM-active tensors) ``fam/<group>.band<i>`` through
``pl_module.log_dict`` and appends one JSON
object per group to ``<run dir>/fam_bands.jsonl``::

    {"step": 100, "group": "attention", "handler": "attention", "active": 12, "alpha_eff": 0.87, "bands": [...]}

At train end it flushes the optimizer's own debug buffer (``debug=True``) and saves ``plots/fam_bands.png``:
one heatmap of band energy over steps per group plus the momentum of every group over steps. The run dir is
``dirpath`` if given, else ``trainer.default_root_dir``; files are written on global rank 0 only. On resume,
rows newer than the restored step are dropped first, so the file has one row per (step, group).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback

from famlab.optim.fam import FAMOptimizer


def find_fam(trainer) -> FAMOptimizer | None:
    """The trainer's FAMOptimizer, if any (``trainer.optimizers`` holds the unwrapped optimizers)."""
    for opt in getattr(trainer, "optimizers", []) or []:
        opt = getattr(opt, "optimizer", opt)  # LightningOptimizer wrapper, if ever passed
        if isinstance(opt, FAMOptimizer):
            return opt
    return None


class FrequencyMonitor(Callback):
    """Log and record FAM band energies / alpha_eff every ``every_n_steps`` optimizer steps."""

    def __init__(
        self, every_n_steps: int = 50, dirpath: str | None = None, filename: str = "fam_bands.jsonl", plot: bool = True
    ):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(
                f"callbacks.frequency_monitor.every_n_steps must be an integer >= 1, got {every_n_steps!r}"
            )
        self.every_n_steps, self.dirpath, self.filename, self.plot = every_n_steps, dirpath, filename, plot
        self._last_step = -1

    def run_dir(self, trainer) -> Path:
        return Path(self.dirpath or trainer.default_root_dir)

    def on_train_start(self, trainer, pl_module) -> None:
        """On resume, drop rows written after the checkpoint's step (they will be recorded again)."""
        path = self.run_dir(trainer) / self.filename
        if not trainer.is_global_zero or not path.exists() or find_fam(trainer) is None:
            return
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["step"] <= trainer.global_step]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps taken so far (a Python int)
        if step == self._last_step or step == 0 or step % self.every_n_steps:
            return
        opt = find_fam(trainer)
        if opt is None:
            return
        self._last_step = step
        summary = opt.band_summary()
        device = next(iter(summary.values()))["bands"].device
        flat = torch.cat(
            [
                torch.cat([s["alpha_eff"].reshape(1).float().to(device), s["bands"].float().to(device)])
                for s in summary.values()
            ]
        )
        values = flat.tolist()  # the single host sync every N steps
        metrics, rows, offset = {}, [], 0
        for group, s in summary.items():
            n = s["bands"].numel()
            alpha, bands = values[offset], values[offset + 1 : offset + 1 + n]
            offset += 1 + n
            metrics[f"fam/{group}.alpha_eff"] = alpha
            if s["active"]:  # groups without FAM-active tensors have no bands worth a column
                metrics.update({f"fam/{group}.band{i}": b for i, b in enumerate(bands)})
            rows.append(
                {
                    "step": step,
                    "group": group,
                    "handler": s["handler"],
                    "active": s["active"],
                    "alpha_eff": alpha,
                    "bands": bands,
                }
            )
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        if trainer.is_global_zero:
            path = self.run_dir(trainer) / self.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in rows)

    def on_train_end(self, trainer, pl_module) -> None:
        opt = find_fam(trainer)
        if opt is None:
            return
        opt.flush_debug()
        path = self.run_dir(trainer) / self.filename
        if self.plot and trainer.is_global_zero and path.exists():
            plot_bands(path, self.run_dir(trainer) / "plots" / "fam_bands.png")


def plot_bands(jsonl: Path, out: Path) -> Path | None:
    """Heatmap of band energy over steps per group + alpha_eff per group; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for line in Path(jsonl).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            series.setdefault(row["group"], []).append(row)
    if not series:
        return None
    fig, axes = plt.subplots(len(series) + 1, 1, figsize=(8, 2.2 * (len(series) + 1)), squeeze=False)
    for ax, (group, rows) in zip(axes[:, 0], series.items()):
        rows.sort(key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        grid = torch.tensor([r["bands"] for r in rows]).T  # [n_bands, steps]
        im = ax.imshow(
            grid.numpy(),
            aspect="auto",
            origin="lower",
            interpolation="nearest",
            extent=(steps[0], steps[-1], -0.5, grid.shape[0] - 0.5),
        )
        ax.set_title(f"{group} ({rows[0]['handler']}): band energy")
        ax.set_ylabel("band")
        fig.colorbar(im, ax=ax)
    ax = axes[-1, 0]
    for group, rows in series.items():
        ax.plot([r["step"] for r in rows], [r["alpha_eff"] for r in rows], marker=".", label=group)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("alpha_eff")
    ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
