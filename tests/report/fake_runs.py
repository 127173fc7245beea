"""Write fake run directories that follow the training pipeline's run-directory contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

COLUMNS = ["step", "epoch", "train/loss", "val/loss", "lr", "perf/tokens_per_s", "perf/optimizer_ms", "perf/elapsed_s"]


def write_metrics(
    path: Path,
    curve: list[tuple[int, float]],
    seconds_per_step: float = 0.1,
    tokens_per_s: float = 1000.0,
    optimizer_ms: float = 2.0,
) -> None:
    """Sparse wide CSV: per eval step one train row (with elapsed time) and one val-only row."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for step, val in curve:
            writer.writerow(
                {
                    "step": step,
                    "epoch": 0,
                    "train/loss": val + 0.1,
                    "lr": 1e-3,
                    "perf/tokens_per_s": tokens_per_s,
                    "perf/optimizer_ms": optimizer_ms,
                    "perf/elapsed_s": step * seconds_per_step,
                }
            )
            writer.writerow({"step": step, "epoch": 0, "val/loss": val})


def write_run(
    root: Path,
    name: str,
    optimizer: str = "adam",
    seed: int = 0,
    lr: float = 1e-3,
    curve: list[tuple[int, float]] | None = None,
    status: str | None = "completed",
    error: str | None = None,
    metrics: bool = True,
    config: bool = True,
    tokens_per_s: float = 1000.0,
    optimizer_ms: float = 2.0,
    seconds_per_step: float = 0.1,
    extra_overrides: tuple[str, ...] = (),
    eval_contexts: dict | None = None,
    meta: dict | None = None,
    n_parameters: int = 12345,
    target: float | None = None,
) -> Path:
    """One run dir; ``status=None`` writes no summary.json (a killed or still-running run)."""
    run = Path(root) / name
    run.mkdir(parents=True, exist_ok=True)
    curve = curve if curve is not None else [(100, 3.0), (200, 2.5), (300, 2.2)]
    overrides = [f"optimizer={optimizer}", f"seed={seed}", f"optimizer.lr={lr}", *extra_overrides]
    if config:
        cfg = {"seed": seed, "optimizer": {"lr": lr}, "model": {"dims": 8}}
        if meta:
            cfg["experiment_meta"] = meta
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / ".hydra").mkdir(exist_ok=True)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics:
        write_metrics(run / "metrics.csv", curve, seconds_per_step, tokens_per_s, optimizer_ms)
    if status is not None:
        vals = [v for _, v in curve]
        reached = [(s, v) for s, v in curve if target is not None and v <= target]
        summary = {
            "status": status,
            "error": error,
            "experiment": "unit",
            "choices": {
                "optimizer": optimizer,
                "position": "rotary",
                "attention": "standard",
                "model": "tiny",
                "hydra/launcher": "basic",
            },
            "overrides": overrides,
            "seed": seed,
            "lr": lr,
            "steps": curve[-1][0] if curve else 0,
            "tokens_seen": 64000,
            "final_val_loss": vals[-1] if vals and status != "failed" else None,
            "best_val_loss": min(vals) if vals and status != "failed" else None,
            "best_val_step": None,
            "wall_time_s": (curve[-1][0] if curve else 0) * seconds_per_step,
            "tokens_per_s": tokens_per_s,
            "optimizer_ms": optimizer_ms,
            "n_parameters": n_parameters,
            "context": 64,
            "hardware": "cpu-test",
            "last_checkpoint": None,
            "target": {
                "metric": "val/loss",
                "value": target,
                "step": reached[0][0] if reached else None,
                "time_s": reached[0][0] * seconds_per_step if reached else None,
            },
        }
        if eval_contexts:
            summary["eval"] = {"context_lengths": eval_contexts}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def linear_curve(end_loss: float, steps: int = 5, start: float = 4.0, every: int = 100):
    """Evenly spaced eval points from ``start`` down to ``end_loss``."""
    return [((i + 1) * every, start + (end_loss - start) * (i + 1) / steps) for i in range(steps)]
