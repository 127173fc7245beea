"""Per-run numbers and per-group statistics over seeds.

Per run (``RunResult``): final and best value of the compared metric (summary first, metrics.csv as
fallback or when the metric is not ``val/loss``), step and elapsed seconds at which the target was
first reached (recomputed from metrics.csv, or the summary's ``val_history``; elapsed is the crossing
row's own ``perf/elapsed_s``, else interpolated from other rows; the summary's ``target`` block is used
only when no curve exists and it was computed for the same metric and value), tokens/s and optimizer
ms per step (summary, else the median of the logged ``perf/*`` values), ``eval.context_lengths``
and the width of the eval interval the crossing fell in (``grid_*``, for the Sheppard term).
``value(..., censored=True)`` replaces "never reached" by the run's budget (its last step / wall
time): a lower bound of the true cost, used by the verdict rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from famlab.report.groups import Group
from famlab.report.runs import Run, Series, finite
from famlab.report.stats import Estimate, first_crossing, interpolate_at, mean_ci, welch_t_test

GROUP_METRICS = ("final", "best", "steps_to_target", "time_to_target", "tokens_per_s", "optimizer_ms")


@dataclass
class RunResult:
    run: Run
    final: float | None = None
    best: float | None = None
    steps_to_target: float | None = None
    time_to_target: float | None = None
    reached: bool | None = None  # None: no target, or no curve to decide from
    grid_steps: float = 0.0  # width of the eval interval the crossing lies in (steps, seconds)
    grid_time: float = 0.0
    budget_steps: float | None = None
    budget_time: float | None = None
    tokens_per_s: float | None = None
    optimizer_ms: float | None = None
    eval_loss: dict[int, float] = field(default_factory=dict)
    eval_accuracy: dict[int, float] = field(default_factory=dict)

    def value(self, metric: str, censored: bool = False) -> float | None:
        """Named per-run value; ``censored`` replaces an unreached target by the run's budget."""
        if metric in ("final", "final_val_loss"):
            return self.final
        if metric in ("best", "best_val_loss"):
            return self.best
        if metric in ("steps_to_target", "time_to_target"):
            reached = getattr(self, metric)
            if reached is not None or not censored or self.reached is not False:
                return reached
            return self.budget_steps if metric == "steps_to_target" else self.budget_time
        if metric in ("tokens_per_s", "optimizer_ms"):
            return getattr(self, metric)
        for prefix, table in (("eval_loss@", self.eval_loss), ("eval_accuracy@", self.eval_accuracy)):
            if metric.startswith(prefix):
                return table.get(int(metric[len(prefix) :]))
        raise ValueError(
            f"unknown metric {metric!r}: use final_val_loss, best_val_loss, "
            "steps_to_target, time_to_target, tokens_per_s, optimizer_ms, "
            "eval_loss@<context> or eval_accuracy@<context>"
        )


def _last(values: list[float]) -> float | None:
    finite_values = [v for v in values if finite(v) is not None]
    return finite_values[-1] if finite_values else None


def _median(values: list[float]) -> float | None:
    vals = sorted(v for v in values if finite(v) is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def _curve(run: Run, metric: str) -> list[tuple[float, float, float | None]]:
    """``(step, value, elapsed_s on that row or None)`` from metrics.csv, else (for ``val/loss``)
    from the summary's ``val_history``."""
    rows = run.metrics.paired(metric, "perf/elapsed_s") if run.metrics else []
    if not rows and metric == "val/loss":
        history = run.summary.get("val_history") or []
        rows = [
            (float(h["step"]), float(h["val_loss"]), finite(h.get("elapsed_s")))
            for h in history
            if isinstance(h, dict) and finite(h.get("step")) is not None and h.get("val_loss") is not None
        ]
    return rows


def run_result(run: Run, metric: str = "val/loss", target: float | None = None, maximize: bool = False) -> RunResult:
    """Collect one run's numbers (see module docstring)."""
    s, out = run.summary, RunResult(run)
    rows = _curve(run, metric)
    curve = Series([r[0] for r in rows], [r[1] for r in rows])
    has_curve = bool(rows)
    if metric == "val/loss" and (s.get("final_val_loss") is not None or not has_curve):
        out.final, out.best = finite(s.get("final_val_loss")), finite(s.get("best_val_loss"))
    elif has_curve:
        vals = [v for v in curve.values if finite(v) is not None]
        out.final = _last(curve.values)
        out.best = (max(vals) if maximize else min(vals)) if vals else None
    out.tokens_per_s, out.optimizer_ms = finite(s.get("tokens_per_s")), finite(s.get("optimizer_ms"))
    if run.metrics and out.tokens_per_s is None:
        out.tokens_per_s = _median(run.metrics.series("perf/tokens_per_s").values)
    if run.metrics and out.optimizer_ms is None:
        out.optimizer_ms = _median(run.metrics.series("perf/optimizer_ms").values)
    out.budget_steps = finite(s.get("steps")) or (run.metrics.last_step if run.metrics else None)
    elapsed = run.metrics.series("perf/elapsed_s") if run.metrics else None
    out.budget_time = finite(s.get("wall_time_s")) or (_last(elapsed.values) if elapsed else None)
    if target is not None:
        if has_curve:
            hit = first_crossing(curve.values, target, maximize)
            out.reached = hit is not None
            if out.reached:
                step, _, own_elapsed = rows[hit]
                out.steps_to_target = step
                out.time_to_target = (
                    own_elapsed
                    if own_elapsed is not None
                    else (interpolate_at(step, elapsed.steps, elapsed.values) if elapsed else None)
                )
                prev_step, _, before = rows[hit - 1] if hit else (0.0, None, 0.0)
                out.grid_steps = step - prev_step
                if before is None and elapsed:
                    before = interpolate_at(prev_step, elapsed.steps, elapsed.values)
                if out.time_to_target is not None and before is not None:
                    out.grid_time = max(0.0, out.time_to_target - before)
        else:
            block = s.get("target") or {}
            if block.get("metric", metric) == metric and finite(block.get("value")) == target:
                out.steps_to_target, out.time_to_target = finite(block.get("step")), finite(block.get("time_s"))
                out.reached = out.steps_to_target is not None
    contexts = (s.get("eval") or {}).get("context_lengths") or {}
    for length, entry in contexts.items():
        entry = entry if isinstance(entry, dict) else {"loss": entry}
        if finite(entry.get("loss")) is not None:
            out.eval_loss[int(length)] = finite(entry.get("loss"))
        if finite(entry.get("accuracy")) is not None:
            out.eval_accuracy[int(length)] = finite(entry.get("accuracy"))
    return out


@dataclass
class GroupStats:
    """Statistics of one group: estimates over its finished runs and target counts."""

    group: Group
    results: list[RunResult]
    estimates: dict[str, Estimate]
    reached: int
    decided: int  # finished runs for which reaching the target could be decided
    eval_loss: dict[int, Estimate]
    ratios: dict[str, dict] = field(default_factory=dict)
    maximize: bool = False
    eval_accuracy: dict[int, Estimate] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.group.label

    def resolution(self, metric: str) -> float:
        """RMS eval-grid width of the runs that reached the target (``*_to_target``), else 0."""
        if metric not in ("steps_to_target", "time_to_target"):
            return 0.0
        attr = "grid_steps" if metric == "steps_to_target" else "grid_time"
        grids = [getattr(r, attr) for r in self.results if r.reached]
        return math.sqrt(sum(g * g for g in grids) / len(grids)) if grids else 0.0

    def values(self, metric: str, censored: bool = False) -> list[float]:
        """Per-seed values: target metrics over finished runs, everything else over completed."""
        pool = (
            self.results if metric.endswith("_to_target") else [r for r in self.results if r.run.status == "completed"]
        )
        vals = [r.value(metric, censored) for r in pool]
        return [v for v in vals if v is not None]


def group_stats(
    group: Group,
    metric: str = "val/loss",
    target: float | None = None,
    maximize: bool = False,
    confidence: float = 0.95,
) -> GroupStats:
    """Stats over the group's finished runs (completed + diverged + pruned; losses over completed only)."""
    results = [run_result(r, metric, target, maximize) for r in group.finished]
    completed = [r for r in results if r.run.status == "completed"]
    lengths = sorted({k for r in completed for k in r.eval_loss})
    eval_loss = {k: mean_ci([r.eval_loss[k] for r in completed if k in r.eval_loss], confidence) for k in lengths}
    accuracy_lengths = sorted({k for r in completed for k in r.eval_accuracy})
    eval_accuracy = {
        k: mean_ci([r.eval_accuracy[k] for r in completed if k in r.eval_accuracy], confidence)
        for k in accuracy_lengths
    }
    decided = [r for r in results if r.reached is not None]
    stats = GroupStats(
        group,
        results,
        {},
        sum(bool(r.reached) for r in decided),
        len(decided),
        eval_loss,
        maximize=maximize,
        eval_accuracy=eval_accuracy,
    )
    stats.estimates = {name: mean_ci(stats.values(name), confidence, stats.resolution(name)) for name in GROUP_METRICS}
    return stats


def add_ratios(stats: list[GroupStats], baseline: GroupStats, confidence: float = 0.95) -> None:
    """Fill ``ratios[metric] = {ratio, p, ...}``: mean(group)/mean(baseline) and Welch p per metric.

    Steps/time to target use reached runs only (the "not reached" counts stand beside them) and
    carry the eval-grid variance (``stats.grid_variance``), as do their CIs.
    """
    for st in stats:
        for name in GROUP_METRICS:
            a, b = st.estimates[name], baseline.estimates[name]
            ratio = a.mean / b.mean if a.n and b.n and b.mean != 0 else float("nan")
            test = welch_t_test(
                st.values(name), baseline.values(name), confidence, st.resolution(name), baseline.resolution(name)
            )
            st.ratios[name] = {
                "ratio": ratio,
                "p": test.p,
                "diff": test.diff,
                "diff_ci": [test.lo, test.hi],
                "df": test.df,
            }


def describe_scale(runs: list[Run]) -> dict:
    """Parameters, tokens per run, hardware and run counts of ``runs`` (the verdicts' scale)."""
    done = [r for r in runs if r.status in ("completed", "diverged", "pruned")]
    params = sorted({int(p) for p in (finite(r.summary.get("n_parameters")) for r in done) if p})
    tokens = [t for t in (finite(r.summary.get("tokens_seen")) for r in done) if t]
    hardware = sorted({str(r.summary["hardware"]) for r in done if r.summary.get("hardware")})
    return {
        "n_parameters": params,
        "tokens_per_run": [min(tokens), max(tokens)] if tokens else [],
        "hardware": hardware,
        "runs": len(runs),
        "finished_runs": len(done),
    }


def _si(x: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"


def scale_line(scale: dict) -> str:
    """``scale: 10.7M parameters, 2.05M tokens/run, NVIDIA H200, 12/13 runs finished``."""
    params = "/".join(_si(p) for p in scale["n_parameters"]) or "unknown"
    tok = scale["tokens_per_run"]
    tokens = "unknown" if not tok else _si(tok[0]) if tok[0] == tok[1] else f"{_si(tok[0])}-{_si(tok[1])}"
    hardware = ", ".join(scale["hardware"]) or "unknown hardware"
    return (
        f"scale: {params} parameters, {tokens} tokens/run, {hardware}, "
        f"{scale['finished_runs']}/{scale['runs']} runs finished"
    )
