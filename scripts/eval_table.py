"""Markdown table of length-generalisation results per group of a ``famlab compare`` report.

    python scripts/eval_table.py docs/claims/long_context/report.json > docs/claims/long_context/eval_table.md

For each group of the report and each evaluated context length: mean ± 95% Student-t half-width over
seeds of the loss (nats) and the accuracy that ``famlab.evaluate`` merged into each run's
``summary.json`` (``eval.context_lengths``). compare's own table has no accuracy column.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

from famlab.report.stats import mean_ci


def cell(values: list[float], digits: int = 4) -> str:
    est = mean_ci(values)
    if not values:
        return "—"
    half = f" ± {est.half_width:.{digits}f}" if math.isfinite(est.half_width) else " (n=1)"
    return f"{est.mean:.{digits}f}{half}"


def table(report: dict, metric: str) -> str:
    per = defaultdict(lambda: defaultdict(list))  # group -> length -> values
    trained = {}
    for run in report["runs"]:
        path = Path(run["path"]) / "summary.json"
        if run["status"] != "completed" or not path.is_file():
            continue
        ev = json.loads(path.read_text()).get("eval") or {}
        trained[run["group"]] = ev.get("context_trained")
        for length, entry in (ev.get("context_lengths") or {}).items():
            if metric in entry:
                per[run["group"]][int(length)].append(float(entry[metric]))
    lengths = sorted({n for g in per.values() for n in g})
    head = [f"{n} ({n / t:g}x)" if (t := next(iter(trained.values()), None)) else str(n) for n in lengths]
    lines = [f"| group ({metric}) | " + " | ".join(head) + " |", "|---|" + "---:|" * len(lengths)]
    for group in [g["label"] for g in report["groups"] if g["label"] in per]:
        lines.append(f"| {group} | " + " | ".join(cell(per[group].get(n, [])) for n in lengths) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="report.json written by famlab compare")
    args = ap.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    print("Mean ± 95% CI half-width over seeds; columns: evaluated context (multiple of the trained context).\n")
    print(table(report, "loss") + "\n\n" + table(report, "accuracy"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
