"""Figures are written as real PNGs when their data exist and skipped when they do not."""
import numpy as np
import pytest
from fake_runs import linear_curve, write_run

from famlab.report.groups import group_runs
from famlab.report.plots import (
    plot_context_lengths, plot_lr_sensitivity, seed_band, write_plots,
)
from famlab.report.results import group_stats
from famlab.report.runs import discover_runs

PNG = b"\x89PNG\r\n\x1a\n"


def _stats(tmp_path, lrs=(1e-3,), evals=True):
    for opt in ("adam", "fam"):
        for lr in lrs:
            for seed in range(2):
                ctx = {"64": {"loss": 2.0 + seed, "accuracy": None}, "256": {"loss": 2.5, "accuracy": None}}
                write_run(tmp_path, f"{opt}_{lr}_{seed}", opt, seed, lr=lr,
                          curve=linear_curve(2.0 + 0.1 * seed), eval_contexts=ctx if evals else None)
    return [group_stats(g) for g in group_runs(discover_runs([tmp_path]))]


def test_seed_band_mean_and_std(tmp_path):
    stats = _stats(tmp_path)
    steps, mean, std = seed_band(stats[0], "val/loss")
    ends = np.array([2.0, 2.1])
    assert steps[-1] == 500 and mean[-1] == pytest.approx(ends.mean())
    assert std[-1] == pytest.approx(ends.std(ddof=1))


def test_all_plots_written_as_png(tmp_path):
    stats = _stats(tmp_path / "runs", lrs=(1e-3, 3e-3))
    plots = write_plots(stats, "val/loss", tmp_path / "out")
    assert set(plots) == {"loss_curves", "lr_sensitivity", "context_length", "loss_vs_throughput"}
    for path in plots.values():
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG)


def test_plots_skipped_without_data(tmp_path):
    stats = _stats(tmp_path / "runs", evals=False)
    assert plot_lr_sensitivity(stats, tmp_path / "lr.png") is None  # a single learning rate
    write_run(tmp_path / "runs", "sgd", "sgd", 0, lr=0.1)  # another lr, but for another optimizer
    stats = [group_stats(g) for g in group_runs(discover_runs([tmp_path / "runs"]))]
    assert plot_lr_sensitivity(stats, tmp_path / "lr.png") is None
    assert plot_context_lengths(stats, tmp_path / "ctx.png") is None
    assert not (tmp_path / "lr.png").exists()
    assert set(write_plots(stats, "val/loss", tmp_path / "out")) == {"loss_curves",
                                                                      "loss_vs_throughput"}
