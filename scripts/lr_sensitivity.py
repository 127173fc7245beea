"""Learning-rate sensitivity of an lr x optimizer x seed sweep (Wortsman et al. 2023, arXiv 2309.14322).

    python scripts/lr_sensitivity.py outputs/claim_stability_smoke/multiruns/<sweep> --out docs/claims/stability

Per run: final val loss (a diverged or failed run, or a non-finite loss, counts as the initial loss
ln(vocab_size)), status, whether it blew up (diverged, failed or ended above the initial loss), the largest attention logit over training and the smallest final attention
entropy over layers (metrics.csv columns ``attn/l{i}.max_logit`` / ``attn/l{i}.entropy``).
Per optimizer and seed: LR sensitivity = mean over the lr grid of min(loss, initial loss) minus the
best loss of that seed's sweep (lower = flatter). Across seeds: mean and 95% Student-t CI, and a
Welch test of every optimizer against ``--baseline``. Writes ``lr_sensitivity.md`` and
``plots/attention_vs_lr.png`` into ``--out``. Reads only run directories (no torch).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

from famlab.report.runs import discover_runs
from famlab.report.stats import mean_ci, welch_t_test


def run_row(run) -> dict | None:
    """The numbers of one run, or None for a run without an optimizer/lr/seed (not part of the grid)."""
    choices = run.summary.get("choices") or run.choices or {}
    opt, lr, seed = choices.get("optimizer"), run.lr, run.seed
    if opt is None or lr is None or seed is None:
        return None
    vocab = (run.summary.get("data") or {}).get("vocab_size")
    init = math.log(vocab) if vocab else float("nan")
    loss = run.summary.get("final_val_loss")
    ok = run.status == "completed" and isinstance(loss, (int, float)) and math.isfinite(loss)
    logit, entropy = float("nan"), float("nan")
    if run.metrics is not None:
        peaks = [
            max(s.values)
            for c in run.metrics.columns
            if c.startswith("attn/") and c.endswith(".max_logit")
            for s in [run.metrics.series(c)]
            if s.values
        ]
        finals = [
            s.values[-1]
            for c in run.metrics.columns
            if c.startswith("attn/") and c.endswith(".entropy")
            for s in [run.metrics.series(c)]
            if s.values
        ]
        logit = max(peaks) if peaks else logit
        entropy = min(finals) if finals else entropy
    blew_up = not ok or loss > init  # diverged (NaN guard), failed, or ended above the initial loss
    return {
        "optimizer": opt,
        "lr": float(lr),
        "seed": seed,
        "status": run.status,
        "init": init,
        "blew_up": blew_up,
        "loss": min(loss, init) if ok else init,
        "max_logit": logit,
        "min_entropy": entropy,
    }


def sensitivity(rows: list[dict]) -> dict[str, list[float]]:
    """Per optimizer, one LR-sensitivity value per seed (seeds with the full lr grid only)."""
    grids = {opt: {r["lr"] for r in rows if r["optimizer"] == opt} for opt in {r["optimizer"] for r in rows}}
    by = defaultdict(list)
    for r in rows:
        by[(r["optimizer"], r["seed"])].append(r["loss"])
    out = defaultdict(list)
    for (opt, _seed), losses in sorted(by.items(), key=lambda kv: str(kv[0])):
        if len(losses) == len(grids[opt]):
            out[opt].append(sum(losses) / len(losses) - min(losses))
    return dict(out)


def fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown(rows: list[dict], sens: dict[str, list[float]], baseline: str) -> str:
    lines = [
        "# LR sensitivity and attention signals",
        "",
        "Final val loss capped at the initial loss ln(vocab) (diverged/failed runs count as the initial loss); "
        "peak max attention logit over training; smallest final attention entropy over layers (nats). "
        "Means over seeds.",
        "",
        "| optimizer | lr | n | final val loss | diverged (NaN guard) | above initial loss | peak max logit | "
        "final min entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cells = defaultdict(list)
    for r in rows:
        cells[(r["optimizer"], r["lr"])].append(r)
    for (opt, lr), rs in sorted(cells.items()):
        mean = lambda key: mean_ci([r[key] for r in rs]).mean  # noqa: E731
        div = sum(r["status"] == "diverged" for r in rs)
        up = sum(r["blew_up"] for r in rs)
        lines.append(
            f"| {opt} | {lr:g} | {len(rs)} | {fmt(mean('loss'))} | {div}/{len(rs)} | {up}/{len(rs)} | "
            f"{fmt(mean('max_logit'), 2)} | {fmt(mean('min_entropy'))} |"
        )
    lines += [
        "",
        "| optimizer | LR sensitivity (mean ± 95% CI over seeds) | n | diverged or above initial loss | "
        f"vs {baseline}: difference [95% CI], Welch p |",
        "|---|---:|---:|---:|---|",
    ]
    for opt, vals in sorted(sens.items()):
        est = mean_ci(vals)
        div = sum(r["blew_up"] for r in rows if r["optimizer"] == opt)
        total = sum(r["optimizer"] == opt for r in rows)
        versus = ""
        if opt != baseline and baseline in sens:
            t = welch_t_test(vals, sens[baseline])
            versus = f"{fmt(t.diff)} [{fmt(t.lo)}, {fmt(t.hi)}], p={fmt(t.p, 2)}"
        lines.append(f"| {opt} | {fmt(est.mean)} ± {fmt(est.half_width)} | {est.n} | {div}/{total} | {versus} |")
    lines += ["", "![attention signals vs lr](plots/attention_vs_lr.png)", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for opt in sorted({r["optimizer"] for r in rows}):
        lrs = sorted({r["lr"] for r in rows if r["optimizer"] == opt})
        for ax, key, label in zip(
            axes,
            ("loss", "max_logit", "min_entropy"),
            ("final val loss (capped)", "peak max attention logit", "final min entropy"),
        ):
            ys = [mean_ci([r[key] for r in rows if r["optimizer"] == opt and r["lr"] == lr]).mean for lr in lrs]
            ax.plot(lrs, ys, marker="o", label=opt)
            ax.set_xscale("log")
            ax.set_xlabel("peak learning rate")
            ax.set_ylabel(label)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="sweep dirs or run dirs")
    ap.add_argument("--out", required=True, help="output folder (lr_sensitivity.md, plots/)")
    ap.add_argument("--baseline", default="adamw", help="optimizer to test the others against")
    args = ap.parse_args(argv)
    rows = [r for r in (run_row(run) for run in discover_runs(args.paths)) if r]
    if not rows:
        raise SystemExit("lr_sensitivity: no runs with optimizer, lr and seed found")
    sens = sensitivity(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, sens, args.baseline)
    (out / "lr_sensitivity.md").write_text(text)
    plot(rows, out / "plots" / "attention_vs_lr.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
