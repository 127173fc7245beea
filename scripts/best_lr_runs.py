"""Print the run dirs of each arm's best learning-rate group in a ``famlab compare`` report.json.

    python scripts/best_lr_runs.py docs/claims/convergence/report.json [--by best|final] [--arm optimizer]

An arm is the value of ``--arm`` in a group's settings; its best group has the lowest mean of
``--by`` over completed seeds. Used to re-run ``famlab compare`` on the tuned arms only (readable
curves), after the pre-registered report on the whole lr x optimizer grid.
"""

from __future__ import annotations

import argparse
import json
import math


def best_groups(report: dict, arm: str, by: str) -> dict[str, str]:
    """``{arm value: group label}`` of the group with the lowest mean ``by`` per arm."""
    best: dict[str, tuple[float, str]] = {}
    for group in report["groups"]:
        value = group["settings"].get(arm)
        mean = group["estimates"][by]["mean"]
        if value is None or mean is None or not math.isfinite(mean):
            continue
        if value not in best or mean < best[value][0]:
            best[value] = (mean, group["label"])
    return {k: label for k, (_, label) in best.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", help="report.json written by famlab compare")
    ap.add_argument("--by", default="best", choices=("best", "final"), help="statistic that picks the lr")
    ap.add_argument("--arm", default="optimizer", help="settings key that names an arm")
    args = ap.parse_args(argv)
    with open(args.report) as handle:
        report = json.load(handle)
    labels = set(best_groups(report, args.arm, args.by).values())
    for run in report["runs"]:
        if run["group"] in labels and run["status"] == "completed":
            print(run["path"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
