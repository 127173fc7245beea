"""Report figures (matplotlib ``Figure`` objects rendered with Agg; no pyplot global state).

Each function writes one PNG and returns its path, or returns None when the data for it is absent
(e.g. a single learning rate, no ``eval.context_lengths``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from famlab.report.results import GroupStats
from famlab.report.runs import finite


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _single_axes():
    fig = Figure(figsize=(6.5, 4.5))
    return fig, fig.add_subplot(1, 1, 1)


def _finish(fig: Figure, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Labels, grid and legend of a one-axis plot, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def seed_band(stats: GroupStats, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps, mean and std over seeds of ``column`` (per run the last value logged at each step)."""
    per_step: dict[float, list[float]] = defaultdict(list)
    for result in stats.results:
        if result.run.metrics is None:
            continue
        series = result.run.metrics.series(column)
        last = {s: v for s, v in zip(series.steps, series.values) if math.isfinite(v)}
        for step, value in last.items():
            per_step[step].append(value)
    if not per_step:
        return None
    steps = np.array(sorted(per_step))
    means = np.array([np.mean(per_step[s]) for s in steps])
    stds = np.array([np.std(per_step[s], ddof=1) if len(per_step[s]) > 1 else 0.0 for s in steps])
    return steps, means, stds


MAX_CURVES = 10  # beyond this many groups only the best SHOWN_BEST (+ the baseline) are drawn
SHOWN_BEST = 8


def curve_groups(
    stats: list[GroupStats], baseline: str | None = None, max_groups: int = MAX_CURVES, keep: int = SHOWN_BEST
) -> list[GroupStats]:
    """All groups when at most ``max_groups``, else the best ``keep`` by mean best value (groups
    without one last) plus the group labelled ``baseline``, in their original order."""
    if len(stats) <= max_groups:
        return list(stats)

    def score(s: GroupStats) -> float:
        e = s.estimates["best"]
        return math.inf if not e.n else (-e.mean if s.maximize else e.mean)

    chosen = {id(s) for s in sorted(stats, key=score)[:keep]}
    chosen |= {id(s) for s in stats if baseline is not None and s.label == baseline}
    return [s for s in stats if id(s) in chosen]


def y_limits(
    bands: list[tuple[np.ndarray, np.ndarray, np.ndarray]], baseline_band=None, maximize: bool = False
) -> tuple[float, float] | None:
    """A readable y range for loss curves: from the lowest mean to 1.5 x the baseline's first mean
    (without a baseline: 1.2 x the 95th percentile of the groups' first means), so runs that blow
    up do not flatten the others; None when nothing finite is plotted or when ``maximize``."""
    means = [m[np.isfinite(m)] for _, m, _ in bands]
    means = [m for m in means if m.size]
    if maximize or not means:
        return None
    low = float(min(m.min() for m in means))
    first = baseline_band[1][np.isfinite(baseline_band[1])] if baseline_band is not None else None
    if first is not None and first.size:
        high = 1.5 * float(first[0])
    else:
        high = 1.2 * float(np.percentile([m[0] for m in means], 95))
    high = min(high, float(max(m.max() for m in means)))
    if not high > low:
        return None
    pad = 0.03 * (high - low)
    return low - pad, high + pad


def plot_loss_curves(stats: list[GroupStats], metric: str, path: Path, baseline: str | None = None) -> Path | None:
    """``metric`` (and ``train/loss`` when logged) vs step, mean +- std over seeds per group; y
    clipped by ``y_limits``; beyond ``MAX_CURVES`` groups only ``curve_groups`` are drawn."""
    shown = curve_groups(stats, baseline)
    omitted = len(stats) - len(shown)
    columns = [metric] + (["train/loss"] if metric != "train/loss" else [])
    bands = {c: [(s.label, seed_band(s, c)) for s in shown] for c in columns}
    columns = [c for c in columns if any(b is not None for _, b in bands[c])]
    if not columns:
        return None
    maximize = any(s.maximize for s in stats)
    fig = Figure(figsize=(6.5 * len(columns), 4.5))
    for i, column in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        for label, band in bands[column]:
            if band is None:
                continue
            steps, mean, std = band
            (line,) = ax.plot(steps, mean, label=label, lw=1.4)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        present = [b for _, b in bands[column] if b is not None]
        base = next((b for label, b in bands[column] if label == baseline and b is not None), None)
        limits = y_limits(present, base, maximize and column == metric)
        if limits:
            ax.set_ylim(*limits)
        ax.set_xlabel("step")
        ax.set_ylabel(column)
        title = f"{column} (mean ± std over seeds)"
        if omitted:
            title += (
                f"\n{len(shown)} of {len(stats)} groups: best by mean best value"
                f"{' + baseline' if baseline else ''}; {omitted} omitted"
            )
        ax.set_title(title, fontsize=9 if omitted else None)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if omitted:
        handles.append(Line2D([], [], color="none"))
        labels.append(f"(+{omitted} groups omitted)")
    fig.axes[0].legend(handles, labels, fontsize=7)
    return _save(fig, path)


# Settings that only choose the learning rate: ``optimizer.lr`` itself and the ``lr_point`` key the
# CPU-tier lr sweeps use to pick a point of each optimizer's own grid (experiment_meta.lr_grid).
LR_SETTINGS = ("lr", "lr_point")


def _without_lr(stats: GroupStats) -> str:
    kept = {k: v for k, v in stats.group.shown.items() if k.split(".")[-1] not in LR_SETTINGS}
    return ",".join(f"{k}={v}" for k, v in kept.items()) or stats.group.settings.get("optimizer", "all")


def initial_loss(run) -> float | None:
    """The loss of a model that has learned nothing: ln(vocab size) from the summary's data block,
    else the run's first logged ``train/loss``; None when neither is known."""
    vocab = finite((run.summary.get("data") or {}).get("vocab_size"))
    if vocab and vocab > 1:
        return math.log(vocab)
    if run.metrics is not None:
        first = [v for v in run.metrics.series("train/loss").values if math.isfinite(v)]
        if first:
            return first[0]
    return None


def lr_points(stats: list[GroupStats]) -> tuple[dict[str, list[tuple[float, float, bool]]], list[float]]:
    """``{setting without the lr: [(lr, final loss, clipped)]}`` and the initial losses seen.

    Each completed run's final loss is clipped at its :func:`initial_loss`; a diverged run counts
    as that loss (Wortsman et al. 2023); ``clipped`` marks both."""
    points: dict[str, list[tuple[float, float, bool]]] = defaultdict(list)
    caps = []
    for s in stats:
        for r in s.results:
            lr, cap = r.run.lr, initial_loss(r.run)
            if not lr:
                continue
            if r.run.status == "completed" and r.final is not None:
                clipped = cap is not None and r.final > cap
                points[_without_lr(s)].append((lr, cap if clipped else r.final, clipped))
            elif r.run.status == "diverged" and cap is not None:
                points[_without_lr(s)].append((lr, cap, True))
            if cap is not None:
                caps.append(cap)
    return points, caps


def plot_lr_sensitivity(stats: list[GroupStats], path: Path) -> Path | None:
    """Final val loss vs learning rate (log x), one line per setting other than the lr; None unless
    some setting was run at two or more learning rates.

    As Wortsman et al. (2023) plot LR sensitivity, losses are clipped at the initial loss
    (:func:`lr_points`), so one blow-up does not flatten every other curve; clipped and diverged
    runs are drawn as crosses on a dashed line at that loss."""
    points, caps = lr_points(stats)
    if not any(len({lr for lr, _, _ in pts}) > 1 for pts in points.values()):
        return None
    fig, ax = _single_axes()
    for label, pts in points.items():
        by_lr = defaultdict(list)
        for lr, loss, _ in pts:
            by_lr[lr].append(loss)
        lrs = sorted(by_lr)
        (line,) = ax.plot(lrs, [np.mean(by_lr[x]) for x in lrs], marker="o", label=label)
        for clipped, marker in ((False, "o"), (True, "x")):
            sel = [p for p in pts if p[2] == clipped]
            ax.scatter(
                [p[0] for p in sel],
                [p[1] for p in sel],
                color=line.get_color(),
                s=14 if clipped else 10,
                alpha=0.7 if clipped else 0.5,
                marker=marker,
            )
    ax.set_xscale("log")
    title = "learning-rate sensitivity (dots: seeds, line: mean)"
    if caps:
        cap = max(caps)
        ax.axhline(cap, color="grey", lw=0.8, ls="--")
        title += f"\nfinal loss clipped at the initial loss {cap:.3g} (x: clipped or diverged)"
    return _finish(fig, ax, "learning rate", "final val loss", title, path)


def plot_context_lengths(stats: list[GroupStats], path: Path) -> Path | None:
    """Eval loss vs context length (log2 x), mean with 95% CI per group; None without evals."""
    present = [s for s in stats if s.eval_loss]
    if not present:
        return None
    fig, ax = _single_axes()
    for s in present:
        lengths = sorted(s.eval_loss)
        means = np.array([s.eval_loss[k].mean for k in lengths])
        half = np.array([s.eval_loss[k].half_width if s.eval_loss[k].n > 1 else 0.0 for k in lengths])
        ax.errorbar(lengths, means, yerr=half, marker="o", capsize=3, label=s.label)
    ax.set_xscale("log", base=2)
    return _finish(fig, ax, "evaluation context length", "loss", "loss vs context length (mean, 95% CI)", path)


def plot_loss_vs_throughput(stats: list[GroupStats], path: Path) -> Path | None:
    """Final val loss vs tokens/s: one dot per completed run, the group mean with +-std bars (CIs
    from 2-3 seeds are too wide to read here); None without throughput."""
    present = [s for s in stats if s.estimates["tokens_per_s"].n and s.estimates["final"].n]
    if not present:
        return None
    fig, ax = _single_axes()
    for s in present:
        pairs = [
            (r.tokens_per_s, r.final)
            for r in s.results
            if r.run.status == "completed" and r.tokens_per_s is not None and r.final is not None
        ]
        x, y = s.estimates["tokens_per_s"], s.estimates["final"]
        bar = ax.errorbar(
            [x.mean],
            [y.mean],
            xerr=[[0.0 if x.n < 2 else x.std]],
            yerr=[[0.0 if y.n < 2 else y.std]],
            marker="o",
            capsize=3,
            label=s.label,
        )
        ax.scatter([p[0] for p in pairs], [p[1] for p in pairs], s=10, alpha=0.5, color=bar.lines[0].get_color())
    return _finish(fig, ax, "tokens/s", "final val loss", "quality vs speed (mean ± std; dots: seeds)", path)


def write_plots(stats: list[GroupStats], metric: str, out: Path, baseline: str | None = None) -> dict[str, Path]:
    """All figures that have data, as ``{name: path}`` under ``out/plots``; ``baseline`` is the
    baseline group's label (always drawn among the loss curves, and their y range)."""
    plots = {
        "loss_curves": plot_loss_curves(stats, metric, out / "plots" / "loss_curves.png", baseline),
        "lr_sensitivity": plot_lr_sensitivity(stats, out / "plots" / "lr_sensitivity.png"),
        "context_length": plot_context_lengths(stats, out / "plots" / "context_length.png"),
        "loss_vs_throughput": plot_loss_vs_throughput(stats, out / "plots" / "loss_vs_throughput.png"),
    }
    return {k: v for k, v in plots.items() if v is not None}
