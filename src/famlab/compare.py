"""``famlab compare``: tables, statistics, plots and verdicts from run directories.

    famlab compare outputs/<sweep> [more dirs...] --baseline optimizer=adam --target 1.6 \\
        --metric val/loss --out outputs/<sweep>/report [--verdict rule.yaml]
    famlab compare outputs/<stage-1 sweep> --emit-best docs/claims/tuned/<experiment>.yaml
    python -m famlab.compare ...

Reads only what the training pipeline wrote (summary.json, metrics.csv, config.yaml, .hydra/); never
imports torch or the model. Writes ``<out>/report.md``, ``<out>/report.json`` and ``<out>/plots/``
and prints the table. Documentation: docs/compare.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import yaml

from famlab.report.best import best_settings, edge_lines, write_best
from famlab.report.groups import group_runs, matching_groups, parse_spec
from famlab.report.markdown import group_rows, write_report
from famlab.report.plots import write_plots
from famlab.report.results import add_ratios, describe_scale, group_stats, run_result, scale_line
from famlab.report.runs import Run, discover_runs, finite
from famlab.report.verdict import collect_rules, evaluate_rule, validate_rule


def _most_common(values: list) -> object | None:
    values = [v for v in values if v is not None]
    return Counter(values).most_common(1)[0][0] if values else None


def resolve_metric(runs: list[Run], metric: str | None) -> str:
    return metric or _most_common([r.experiment_meta.get("metric") for r in runs]) or "val/loss"


def resolve_target(runs: list[Run], metric: str, target: float | None) -> tuple[float | None, str]:
    """``--target``, else the summaries' target for this metric, else ``experiment_meta.target``."""
    if target is not None:
        return float(target), "--target"
    blocks = [r.summary.get("target") or {} for r in runs]
    found = _most_common([finite(b.get("value")) for b in blocks if b.get("metric", metric) == metric])
    if found is not None:
        return float(found), "summary.json target"
    meta = _most_common([finite(r.experiment_meta.get("target")) for r in runs])
    if meta is not None:
        return float(meta), "config.yaml experiment_meta.target"
    return None, "none given (pass --target)"


def _is_file(item: str) -> bool:
    """``Path(item).is_file()``, False where the OS rejects the name (e.g. longer than 255 bytes)."""
    try:
        return Path(item).is_file()
    except (OSError, ValueError):
        return False


def load_verdict_rules(items: list[str]) -> list[dict]:
    """Rules from ``--verdict`` values: inline JSON, or a .json/.yaml file (a mapping or a list)."""
    rules = []
    for item in items:
        try:
            loaded = (
                json.loads(item)
                if item.lstrip().startswith(("{", "["))
                else (yaml.safe_load(Path(item).read_text()) if _is_file(item) else json.loads(item))
            )
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"--verdict {item!r} is neither a readable file nor JSON: {exc}") from exc
        for rule in loaded if isinstance(loaded, list) else [loaded]:
            rules.append(validate_rule(rule))
    return rules


def _pick_baseline(spec: str | None, stats) -> tuple[object | None, str]:
    if not spec:
        return None, ""
    try:
        matches = matching_groups(spec, [s.group for s in stats])
    except ValueError as exc:
        return None, str(exc)
    arms = [s for s in stats if s.group in matches and s.estimates["best"].n]
    if not arms:
        return None, f"baseline {spec!r} matched no group with completed runs"
    if len(arms) == 1:
        return arms[0], ""
    best = min(arms, key=lambda s: s.estimates["best"].mean * (-1 if s.maximize else 1))
    return best, f"{spec!r} matched {len(arms)} groups; using the best by mean best value: {best.label}"


def compare(
    paths: list[str | Path],
    baseline: str | None = None,
    target: float | None = None,
    metric: str | None = None,
    maximize: bool = False,
    out: str | Path | None = None,
    verdicts: list[dict] | None = None,
    plots: bool = True,
    emit_best: str | Path | None = None,
    tuning: dict | None = None,
) -> dict:
    """Build the report for ``paths``; returns the report data (also written to ``out``).

    ``emit_best``: also write the stage-2 hand-off file (``famlab.report.best``) there, with the
    options ``tuning`` (``arm``, ``by``, ``target_arm``, ``fraction``, ``min_seeds``) over the
    runs' ``experiment_meta.tuning``."""
    runs = discover_runs(paths)
    if all(r.error == "path does not exist" for r in runs):  # also true for no runs at all
        raise FileNotFoundError(f"no run directories (config.yaml or summary.json) under {', '.join(map(str, paths))}")
    out = Path(out) if out else Path(paths[0]) / "report"
    metric = resolve_metric(runs, metric)
    target, target_source = resolve_target(runs, metric, target)
    groups = group_runs(runs)
    stats = [group_stats(g, metric, target, maximize) for g in groups]
    spec = baseline or _most_common([r.experiment_meta.get("baseline") for r in runs])
    base, note = _pick_baseline(spec, stats)
    if base is not None:
        add_ratios(stats, base)
    rules = verdicts if verdicts is not None else collect_rules(runs)
    scale = describe_scale(runs)
    group_of = {id(r): g.label for g in groups for r in g.runs}
    run_rows = []
    for r in runs:
        res = run_result(r, metric, target, maximize)
        run_rows.append(
            {
                "path": str(r.path),
                "group": group_of.get(id(r), "unknown"),
                "status": r.status,
                "error": r.error,
                "seed": r.seed,
                "lr": r.lr,
                "final": res.final,
                "best": res.best,
                "steps_to_target": res.steps_to_target,
                "time_to_target": res.time_to_target,
                "reached": res.reached,
                "tokens_per_s": res.tokens_per_s,
                "optimizer_ms": res.optimizer_ms,
            }
        )
    data = {
        "sources": [str(p) for p in paths],
        "metric": metric,
        "maximize": maximize,
        "target": {"value": target, "source": target_source},
        "scale": scale,
        "scale_line": scale_line(scale),
        "baseline": {"spec": spec, "label": base.label if base else None, "note": note},
        "groups": [
            {
                "label": s.label,
                "settings": s.group.settings,
                "n_runs": len(s.group.runs),
                "statuses": dict(Counter(r.status for r in s.group.runs)),
                "estimates": {k: e.as_dict() for k, e in s.estimates.items()},
                "target_reached": s.reached,
                "target_decided": s.decided,
                "eval_loss": {k: e.as_dict() for k, e in s.eval_loss.items()},
                "eval_accuracy": {k: e.as_dict() for k, e in s.eval_accuracy.items()},
                "ratios_vs_baseline": s.ratios,
            }
            for s in stats
        ],
        "runs": run_rows,
        "verdicts": [evaluate_rule(rule, stats, scale_line(scale)) for rule in rules],
        "plots": write_plots(stats, metric, out, base.label if base else None) if plots else {},
    }
    if emit_best:
        meta = _most_common([json.dumps(r.experiment_meta.get("tuning") or {}, sort_keys=True) for r in runs])
        options = {**json.loads(meta or "{}"), **{k: v for k, v in (tuning or {}).items() if v is not None}}
        best = best_settings(stats, metric, options, [str(p) for p in paths])
        data["best"] = {
            "path": str(write_best(best, emit_best)),
            "edges": edge_lines(best),
            "target": best["target"],
            "target_note": best.get("target_note"),
        }
    md, js = write_report(data, stats, out)
    data["report_md"], data["report_json"], data["_stats"] = str(md), str(js), stats
    return data


def print_summary(data: dict) -> None:
    """The results table, problems and verdicts on the terminal (rich)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(
        f"[bold]{data['scale_line']}[/bold]  metric {data['metric']}, "
        f"target {data['target']['value']} ({data['target']['source']})"
    )
    header, rows = group_rows(data["_stats"], data["target"]["value"])
    table = Table(*[h.replace("{m}", data["metric"]) for h in header], title="famlab compare")
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)
    if data["baseline"]["note"]:
        console.print(f"[yellow]{data['baseline']['note']}[/yellow]")
    for r in data["runs"]:
        if r["status"] != "completed":
            console.print(f"[red]{r['status']}[/red] {escape(r['path'])}: {escape(r['error'] or '')}", highlight=False)
    for v in data["verdicts"]:
        claim = v["rule"].get("claim") if isinstance(v["rule"], dict) else v["rule"]
        console.print(f"[bold]{escape(str(claim))}[/bold]: {v['verdict']} ({escape(v['scale'])})")
        for reason in v["reasons"]:
            console.print(f"  note: {escape(reason)}")
    console.print(f"report: {data['report_md']}")
    if data.get("best"):
        best = data["best"]
        for line in best["edges"]:
            console.print(f"[red]grid edge[/red] {escape(line)}", highlight=False)
        target = best["target"]["value"] if best["target"] else f"none ({best['target_note'] or 'no target arm'})"
        console.print(
            f"best lrs: {best['path']} (target {target}"
            f"{'; stage 2 refuses until the grids are widened' if best['edges'] else ''})"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="famlab compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  famlab compare outputs/claim_convergence_smoke/multiruns/<sweep> --baseline optimizer=adam",
    )
    p.add_argument("paths", nargs="+", help="sweep directories and/or run directories")
    p.add_argument("--baseline", help="baseline group: its label or key=value[,key=value]")
    p.add_argument("--target", type=float, help="target value of --metric (default: the experiment's)")
    p.add_argument("--metric", help="metrics.csv column to compare (default: experiment's, or val/loss)")
    p.add_argument("--maximize", action="store_true", help="higher --metric is better (accuracy)")
    p.add_argument("--out", help="output directory (default: <first path>/report)")
    p.add_argument(
        "--verdict",
        action="append",
        default=[],
        help="verdict rule as JSON or a .json/.yaml file (repeatable; replaces config rules)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument(
        "--emit-best",
        metavar="FILE",
        help="write each arm's best lr, grid, grid-edge flag and the target to FILE (YAML) "
        "for a stage-2 experiment's experiment_meta.best_from",
    )
    p.add_argument(
        "--arm", help="setting that names an arm for --emit-best (default: experiment_meta.tuning.arm, else optimizer)"
    )
    p.add_argument(
        "--by",
        choices=("final_val_loss", "best_val_loss"),
        help="statistic that picks each arm's lr (default: experiment_meta.tuning.by, else final_val_loss)",
    )
    p.add_argument(
        "--target-arm", help="arm whose best-lr seeds fix the target (default: experiment_meta.tuning.target_arm)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rules = load_verdict_rules(args.verdict) if args.verdict else None
        if args.baseline and "=" in args.baseline:
            parse_spec(args.baseline)
        data = compare(
            args.paths,
            baseline=args.baseline,
            target=args.target,
            metric=args.metric,
            maximize=args.maximize,
            out=args.out,
            verdicts=rules,
            plots=not args.no_plots,
            emit_best=args.emit_best,
            tuning={"arm": args.arm, "by": args.by, "target_arm": args.target_arm},
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"famlab compare: error: {exc}", file=sys.stderr)
        return 2
    print_summary(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
