"""Figures are written as real PNGs when their data exist and skipped when they do not."""

import numpy as np
import pytest
from fake_runs import linear_curve, write_run

from famlab.report.groups import group_runs
from famlab.report.plots import (
    curve_groups,
    plot_context_lengths,
    plot_loss_curves,
    plot_lr_sensitivity,
    seed_band,
    write_plots,
    y_limits,
)
from famlab.report.results import group_stats
from famlab.report.runs import discover_runs

PNG = b"\x89PNG\r\n\x1a\n"


def _stats(tmp_path, lrs=(1e-3,), evals=True):
    for opt in ("adam", "fam"):
        for lr in lrs:
            for seed in range(2):
                ctx = {"64": {"loss": 2.0 + seed, "accuracy": None}, "256": {"loss": 2.5, "accuracy": None}}
                write_run(
                    tmp_path,
                    f"{opt}_{lr}_{seed}",
                    opt,
                    seed,
                    lr=lr,
                    curve=linear_curve(2.0 + 0.1 * seed),
                    eval_contexts=ctx if evals else None,
                )
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
    assert set(write_plots(stats, "val/loss", tmp_path / "out")) == {"loss_curves", "loss_vs_throughput"}


def test_many_groups_show_best_and_baseline(tmp_path):
    # 28 groups (14 lrs x 2 optimizers); some lrs blow up to 1e4
    lrs = [10 ** (-4 + 0.2 * i) for i in range(14)]
    for opt in ("adam", "fam"):
        for i, lr in enumerate(lrs):
            curve = linear_curve(1.5 + 0.05 * i) if i < 10 else [(100, 3.5), (200, 50.0), (300, 1e4)]
            write_run(tmp_path / "runs", f"{opt}_{i}", opt, 0, lr=lr, curve=curve)
    stats = [group_stats(g) for g in group_runs(discover_runs([tmp_path / "runs"]))]
    assert len(stats) == 28
    baseline = stats[9].label  # adam at a mediocre lr: not among the best 8
    shown = curve_groups(stats, baseline)
    best = sorted(stats, key=lambda s: s.estimates["best"].mean)[:8]
    assert {s.label for s in shown} == {s.label for s in best} | {baseline} and len(shown) == 9
    assert curve_groups(stats[:10], None) == stats[:10]  # at most 10 groups: all drawn
    path = plot_loss_curves(stats, "val/loss", tmp_path / "loss.png", baseline)
    assert path.read_bytes().startswith(PNG)


def test_y_limits_clip_blow_ups():
    steps = np.array([100.0, 200.0, 300.0])
    base = (steps, np.array([4.0, 3.0, 2.0]), np.zeros(3))
    good = (steps, np.array([3.8, 2.5, 1.5]), np.zeros(3))
    blown = (steps, np.array([3.9, 80.0, 1e4]), np.zeros(3))
    low, high = y_limits([base, good, blown], base)
    pad = 0.03 * (6.0 - 1.5)
    assert low == pytest.approx(1.5 - pad) and high == pytest.approx(6.0 + pad)  # 1.5 x 4.0
    low, high = y_limits([good, blown])  # no baseline: 1.2 x the 95th percentile of first values
    assert high == pytest.approx(1.2 * np.percentile([3.8, 3.9], 95) + 0.03 * (1.2 * 3.895 - 1.5))
    assert y_limits([good], None, maximize=True) is None
    # nothing exceeds the clip: the range ends at the data's maximum
    assert y_limits([good], good)[1] == pytest.approx(3.8 + 0.03 * 2.3)


def test_lr_sensitivity_clips_at_the_initial_loss(tmp_path):
    """A blown-up or diverged run counts as the initial loss (the first train/loss logged here:
    the fake summaries carry no vocabulary size), so it cannot stretch the y axis."""
    import json

    from famlab.report.plots import lr_points

    for lr, end in ((1e-3, 2.5), (1e-2, 2.0), (1e-1, 114.0)):
        write_run(tmp_path, f"adam_{lr}", "adam", 0, lr=lr, curve=[(100, 3.9), (200, end)])
    write_run(tmp_path, "adam_1", "adam", 0, lr=1.0, curve=[(100, 3.9)], status="diverged")
    run = tmp_path / "adam_0.01"  # a vocabulary size in the summary wins: ln(64)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "data": {"vocab_size": 64}}))
    stats = [group_stats(g) for g in group_runs(discover_runs([tmp_path]))]
    points, caps = lr_points(stats)
    (pts,) = points.values()
    got = {lr: (round(loss, 4), clipped) for lr, loss, clipped in pts}
    assert got == {1e-3: (2.5, False), 1e-2: (2.0, False), 1e-1: (4.0, True), 1.0: (4.0, True)}
    assert round(max(caps), 4) == round(float(np.log(64)), 4)
    assert plot_lr_sensitivity(stats, tmp_path / "lr.png").read_bytes().startswith(PNG)


def test_lr_sensitivity_joins_the_points_of_an_lr_point_grid(tmp_path):
    """CPU-tier lr sweeps pick each optimizer's lr through ``lr_point=pN``: one line per optimizer."""
    from famlab.report.plots import lr_points

    for opt, grid in (("adam", (1e-3, 3e-3)), ("fam", (0.3, 1.0))):
        for i, lr in enumerate(grid):
            write_run(tmp_path, f"{opt}_{i}", opt, 0, lr=lr, extra_overrides=(f"lr_point=p{i}",))
    stats = [group_stats(g) for g in group_runs(discover_runs([tmp_path]))]
    points, _ = lr_points(stats)
    assert {k: sorted(lr for lr, _, _ in v) for k, v in points.items()} == {
        "optimizer=adam": [1e-3, 3e-3],
        "optimizer=fam": [0.3, 1.0],
    }
