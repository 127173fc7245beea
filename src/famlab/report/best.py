"""Stage 1 -> stage 2 of the two-stage lr protocol: each arm's best learning rate and the target.

``famlab compare <stage-1 sweep> --emit-best <file.yaml>`` calls :func:`best_settings` on the
compared groups and writes the result with :func:`write_best`. The file (read back by
:mod:`famlab.tuning` for stage 2) is::

    arm_key: optimizer            # the setting that names an arm
    by: final_val_loss            # the statistic that chose each arm's lr (lowest mean over seeds)
    arms:
      adamw: {lr: 0.003, grid: [0.001, 0.003, 0.01, 0.03], at_edge: false, edge: null,
              n: 1, value: 1.52, group: "optimizer=adamw,lr_point=p1"}
      fam:   {lr: 3.0, grid: [0.3, 1.0, 3.0], at_edge: true, edge: high, ...}
    target: {value: 1.61, arm: adamw, lr: 0.003, n: 3, values: [...], steps: [...], seeds: [...],
             fraction: 0.8, metric: val/loss}   # null when fewer than min_seeds seeds exist
    target_note: ...                            # why the target is null

An arm's grid is every lr at which any of its runs was launched (diverged and failed runs
included: a diverged lr above the winner brackets it); its winner is the lr group with the lowest
mean ``by`` over completed seeds. A winner at the lowest or highest grid point (or a one-point
grid) is ``at_edge``: stage 2 refuses to start until that grid is widened. The target is the
median, over the completed seeds of the target arm's winning group, of the metric at the first
evaluation at or after ``fraction`` of each run's steps; it needs at least ``min_seeds`` seeds.
Reads only the report's statistics (no torch).
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from famlab.report.results import GroupStats, _curve
from famlab.report.runs import finite

TUNING_DEFAULTS = {"arm": "optimizer", "by": "final_val_loss", "target_arm": None, "fraction": 0.8, "min_seeds": 3}


def _median(values: list[float]) -> float:
    vals = sorted(values)
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def group_lr(stats: GroupStats) -> float | None:
    """The learning rate of a group's runs (the median, should they disagree); None without one."""
    lrs = [r.lr for r in stats.group.runs if r.lr is not None]
    return _median(lrs) if lrs else None


def _clean(x: float) -> float:
    return float(f"{x:.6g}")


def arm_entry(groups: list[GroupStats], by: str, maximize: bool = False) -> dict:
    """Winner, grid and edge flag of one arm's lr groups."""
    grid = sorted({_clean(lr) for lr in (group_lr(s) for s in groups) if lr is not None})
    scored = []
    for s in groups:
        vals, lr = s.values(by), group_lr(s)
        if vals and lr is not None:
            mean = sum(vals) / len(vals)
            if math.isfinite(mean):
                scored.append((-mean if maximize else mean, s, mean, len(vals), _clean(lr)))
    entry = {"lr": None, "grid": grid, "at_edge": None, "edge": None, "n": 0, "value": None, "group": None}
    if not scored:
        return entry
    _, best, mean, n, lr = min(scored, key=lambda t: t[0])
    edge = "single" if len(grid) < 2 else "low" if lr == grid[0] else "high" if lr == grid[-1] else None
    entry.update(lr=lr, at_edge=edge is not None, edge=edge, n=n, value=_clean(mean), group=best.label)
    return entry


def value_at_fraction(result, metric: str, fraction: float) -> tuple[float, float] | None:
    """``(step, value)`` of ``metric`` at the first evaluation at or after ``fraction`` of the run's
    last step; None without a curve."""
    rows = [(s, v) for s, v, _ in _curve(result.run, metric) if finite(v) is not None]
    if not rows:
        return None
    last = result.budget_steps or rows[-1][0]
    for step, value in rows:
        if step >= fraction * last - 1e-9:
            return step, value
    return rows[-1]


def target_entry(
    groups: list[GroupStats], arm: dict, metric: str, fraction: float, min_seeds: int, arm_name: str
) -> tuple[dict | None, str | None]:
    """The target from the target arm's winning group, or ``(None, why)``."""
    if arm.get("group") is None:
        return None, f"the target arm {arm_name} has no completed run"
    group = next(s for s in groups if s.label == arm["group"])
    found = []
    for result in group.results:
        if result.run.status != "completed":
            continue
        at = value_at_fraction(result, metric, fraction)
        if at is not None:
            found.append((result.run.seed, at[0], at[1]))
    if len(found) < min_seeds:
        return None, (
            f"the target needs >= {min_seeds} completed seeds of {arm_name} at its best lr "
            f"{arm['lr']:g}; stage 1 has {len(found)}"
        )
    return {
        "value": round(_median([v for _, _, v in found]), 4),
        "arm": arm_name,
        "lr": arm["lr"],
        "n": len(found),
        "metric": metric,
        "fraction": fraction,
        "seeds": [s for s, _, _ in found],
        "steps": [st for _, st, _ in found],
        "values": [_clean(v) for _, _, v in found],
    }, None


def best_settings(stats: list[GroupStats], metric: str, tuning: dict, sources: list[str]) -> dict:
    """The stage-2 hand-off (module docstring) from the stage-1 groups ``stats``."""
    opts = {**TUNING_DEFAULTS, **{k: v for k, v in (tuning or {}).items() if v is not None}}
    key, by = str(opts["arm"]), str(opts["by"])
    by_arm: dict[str, list[GroupStats]] = {}
    for s in stats:
        arm = s.group.settings.get(key)
        if arm is not None:
            by_arm.setdefault(str(arm), []).append(s)
    if not by_arm:
        raise ValueError(f"--emit-best: no group has the arm setting {key!r} (choose it with --arm)")
    maximize = any(s.maximize for s in stats) and by not in ("final_val_loss", "best_val_loss")
    arms = {name: arm_entry(groups, by, maximize) for name, groups in by_arm.items()}
    out = {"sources": list(sources), "arm_key": key, "by": by, "metric": metric, "arms": arms, "target": None}
    target_arm = opts.get("target_arm")
    if target_arm is not None:
        if str(target_arm) not in arms:
            raise ValueError(f"--emit-best: target arm {target_arm!r} is not among the arms {sorted(arms)}")
        out["target"], note = target_entry(
            by_arm[str(target_arm)],
            arms[str(target_arm)],
            metric,
            float(opts["fraction"]),
            int(opts["min_seeds"]),
            str(target_arm),
        )
        if note:
            out["target_note"] = note
    return out


def edge_lines(best: dict) -> list[str]:
    """One line per arm whose winner lies at the edge of its grid (or that has no winner)."""
    lines = []
    for name, arm in best["arms"].items():
        grid = ", ".join(f"{x:g}" for x in arm["grid"])
        if arm["lr"] is None:
            lines.append(f"{best['arm_key']}={name}: no completed run on grid [{grid}]")
        elif arm["at_edge"]:
            where = {"low": "lowest", "high": "highest", "single": "only"}[arm["edge"]]
            lines.append(
                f"{best['arm_key']}={name}: best lr {arm['lr']:g} is the {where} point of its grid "
                f"[{grid}]; widen the grid and rerun that arm"
            )
    return lines


def write_best(best: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Written by famlab compare --emit-best from the stage-1 sweep(s) below; read by stage 2\n"
        "# through experiment_meta.best_from (famlab.tuning). Regenerate it, do not edit it.\n"
    )
    path.write_text(header + yaml.safe_dump(best, sort_keys=False, default_flow_style=None, width=110))
    return path
