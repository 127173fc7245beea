"""Print the ``groups:`` table of a matched-momentum FAM ablation from a FAM run directory.

    python scripts/matched_momenta.py RUN_DIR [--from-step N]

Reads ``RUN_DIR/fam_bands.jsonl`` (written by the FrequencyMonitor callback: per group and logged step the mean
``alpha_eff`` over the tensors whose analysis is active) and ``RUN_DIR/config.yaml`` (the run's table). Each
group's matched momentum is the mean ``alpha_eff`` over the records with active tensors (from step N on);
groups that were never analysed keep their table alpha. The output is YAML for ``conf/optimizer/fam_matched.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from famlab.optim.fam_config import REFERENCE_GROUPS


def matched_momenta(run_dir: Path, from_step: int = 0) -> tuple[dict[str, dict], dict[str, int]]:
    """``({group: row with alpha replaced by the mean alpha_eff}, {group: number of records averaged})``."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    table = config["optimizer"].get("groups") or REFERENCE_GROUPS  # runs from before the table was configuration
    values: dict[str, list[float]] = defaultdict(list)
    for line in (run_dir / "fam_bands.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["active"] > 0 and rec["step"] >= from_step:
            values[rec["group"]].append(float(rec["alpha_eff"]))
    rows = {}
    for group, row in table.items():
        alpha = sum(values[group]) / len(values[group]) if values[group] else row["alpha"]
        rows[group] = dict(row, alpha=round(alpha, 4))
    return rows, {g: len(v) for g, v in values.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--from-step", type=int, default=0, help="ignore records before this step")
    args = parser.parse_args(argv)
    for name in ("fam_bands.jsonl", "config.yaml"):
        if not (args.run_dir / name).is_file():
            print(
                f"famlab: error: {args.run_dir / name} does not exist (a FAM run directory is needed)", file=sys.stderr
            )
            return 2
    rows, counts = matched_momenta(args.run_dir, args.from_step)
    print(f"# mean alpha_eff of {args.run_dir} (records per group: {counts})")
    print("groups:")
    for group, row in rows.items():
        print(f"  {group + ':':<11}{{alpha: {row['alpha']}, lr_scale: {row['lr_scale']}, wd_scale: {row['wd_scale']}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
