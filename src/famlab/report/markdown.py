"""Render a comparison as ``report.md`` (tables, problems, verdicts, plots) and ``report.json``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from famlab.report.results import GroupStats
from famlab.report.stats import Estimate
from famlab.report.verdict import format_verdict

COLUMNS = {
    "final": "final {m}",
    "best": "best {m}",
    "steps_to_target": "steps to target",
    "time_to_target": "time to target (s)",
    "tokens_per_s": "tokens/s",
    "optimizer_ms": "optimizer ms/step",
}
PROBLEM_STATUSES = ("failed", "missing", "running", "interrupted", "diverged", "pruned")


def num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def estimate_cell(e: Estimate) -> str:
    """``mean ± half-width`` of the 95% CI; ``mean (n=1)``; ``—`` without values."""
    if e.n == 0:
        return "—"
    if e.n == 1:
        return f"{num(e.mean)} (n=1)"
    return f"{num(e.mean)} ± {num(e.half_width)}"


def target_cell(s: GroupStats, name: str) -> str:
    """Estimate over runs that reached the target plus ``not reached (k/n)`` when any did not."""
    if s.decided == 0:
        return "unknown (no curve)" if s.results else "—"
    missed = s.decided - s.reached
    if s.reached == 0:
        return f"not reached ({missed}/{s.decided})"
    cell = estimate_cell(s.estimates[name])
    return cell + (f"; not reached ({missed}/{s.decided})" if missed else "")


def status_counts(s: GroupStats) -> str:
    counts = {}
    for run in s.group.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in counts.items() if k != "completed") or "—"


def group_rows(stats: list[GroupStats], target: float | None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table (shared by markdown and the terminal); ``loss@<ctx>`` and
    ``acc@<ctx>`` columns for every context length in the summaries' ``eval.context_lengths``."""
    names = [n for n in COLUMNS if target is not None or not n.endswith("_to_target")]
    losses = sorted({k for s in stats for k in s.eval_loss})
    accuracies = sorted({k for s in stats for k in s.eval_accuracy})
    header = (
        ["group", "n", "other runs"]
        + [COLUMNS[n] for n in names]
        + [f"loss@{k}" for k in losses]
        + [f"acc@{k}" for k in accuracies]
    )
    rows = []
    for s in stats:
        cells = [s.label, str(s.estimates["final"].n), status_counts(s)]
        cells += [target_cell(s, n) if n.endswith("_to_target") else estimate_cell(s.estimates[n]) for n in names]
        cells += [estimate_cell(s.eval_loss[k]) if k in s.eval_loss else "—" for k in losses]
        cells += [estimate_cell(s.eval_accuracy[k]) if k in s.eval_accuracy else "—" for k in accuracies]
        rows.append(cells)
    return header, rows


def ratio_rows(stats: list[GroupStats], target: float | None) -> tuple[list[str], list[list[str]]]:
    names = [n for n in COLUMNS if target is not None or not n.endswith("_to_target")]
    header = ["group"] + [COLUMNS[n] + " ratio (p)" for n in names]
    rows = [
        [s.label] + [f"{num(s.ratios[n]['ratio'])} ({num(s.ratios[n]['p'])})" for n in names] for s in stats if s.ratios
    ]
    return header, rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in row] for row in [header] + rows]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in esc[1:]
    ]


def render_markdown(data: dict, stats: list[GroupStats], out: Path) -> str:
    """The report text; ``data`` is the report.json content, plots are linked relative to ``out``."""
    metric, target = data["metric"], data["target"]["value"]
    lines = [
        "# famlab comparison",
        "",
        f"- sources: {', '.join(f'`{s}`' for s in data['sources'])}",
        f"- {data['scale_line']}",
        f"- metric: `{metric}` ({'higher' if data['maximize'] else 'lower'} is better); "
        f"target: {num(target)} ({data['target']['source']})",
        f"- baseline: {data['baseline'].get('label') or 'none'}"
        + (f" — {data['baseline']['note']}" if data["baseline"].get("note") else ""),
        "- cells: mean ± half-width of the 95% Student-t CI over seeds; steps/time to target over "
        "the runs that reached it",
        "",
    ]
    header, rows = group_rows(stats, target)
    lines += ["## Results", ""] + [l.replace("{m}", metric) for l in _table(header, rows)] + [""]
    header, rows = ratio_rows(stats, target)
    if rows:
        lines += [
            f"## Against the baseline ({data['baseline']['label']})",
            "",
            "Ratio of means (group / baseline) and Welch two-sided p on the per-seed values.",
            "",
        ]
        lines += [l.replace("{m}", metric) for l in _table(header, rows)] + [""]
    lines += ["## Verdicts", ""]
    lines += [format_verdict(v) + "\n" for v in data["verdicts"]] or ["No verdict rule was stated.", ""]
    problems = [r for r in data["runs"] if r["status"] in PROBLEM_STATUSES]
    lines += ["## Failed, missing, interrupted, diverged and still-running runs", ""]
    lines += [
        f"- `{r['path']}` ({r['group']}): **{r['status']}** — {r['error'] or 'no error recorded'}" for r in problems
    ] or ["None."]
    lines += ["", "## Runs", ""]
    run_header = [
        "run",
        "group",
        "seed",
        "status",
        "lr",
        f"final {metric}",
        f"best {metric}",
        "steps to target",
        "time to target (s)",
    ]
    lines += _table(
        run_header,
        [
            [
                Path(r["path"]).name,
                r["group"],
                str(r["seed"]),
                r["status"],
                num(r["lr"]),
                num(r["final"]),
                num(r["best"]),
                num(r["steps_to_target"]),
                num(r["time_to_target"]),
            ]
            for r in data["runs"]
        ],
    )
    if data["plots"]:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({rel})\n" for name, rel in data["plots"].items()]
    return "\n".join(lines) + "\n"


def jsonable(value):
    """Replace NaN/inf by None and paths by strings, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(data: dict, stats: list[GroupStats], out: Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.json`` into ``out``; plot paths become relative to it."""
    out.mkdir(parents=True, exist_ok=True)
    data = dict(data, plots={k: os.path.relpath(v, out) for k, v in data["plots"].items()})
    md, js = out / "report.md", out / "report.json"
    md.write_text(render_markdown(data, stats, out))
    js.write_text(json.dumps(jsonable(data), indent=2, default=str) + "\n")
    return md, js
