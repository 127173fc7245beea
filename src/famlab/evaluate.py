"""Length generalisation: evaluate a trained run at longer contexts than it was trained on.

    python -m famlab.evaluate run=<run dir> eval.context_lengths=[256,512,1024]
    famlab evaluate run=<run dir> eval.batches=8 eval.batch_size=8 eval.checkpoint=last eval.device=cuda
    famlab evaluate run=<run dir> eval=long          # a preset of conf/eval/; --help lists them

For every length it scores ``eval.batches`` fixed validation batches (the data module's
``eval_batches``: held-out windows of the run's corpus, or fresh MQAR sequences for
``data=recall``; the same for every seed and variant) and reports the token-weighted loss (nats),
bits per character and accuracy on scored positions (recall accuracy for the synthetic task,
next-token accuracy for text). Writes into the run dir ``eval_context.json``, ``eval_context.md``
and ``plots/eval_context.png``, and merges ``eval.context_lengths = {"<L>": {loss, bpc, accuracy,
scored}}`` into ``summary.json`` (what ``famlab compare`` reads). A length the data or the model
cannot serve (longer than the validation split, out of memory, a variant with a hard length
limit) is recorded with its ``error`` and the others still run. A rerun replaces the earlier
context results.

Defaults: ``eval.context_lengths`` = 1x, 2x, 4x the trained ``model.context``; ``eval.batches`` =
``data.val_batches``; ``eval.batch_size`` = ``data.batch_size``; ``eval.checkpoint`` = best.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from famlab.data.synthetic import IGNORE  # unscored target positions
from famlab.errors import ConfigError

# the keys of conf/evaluate.yaml and conf/eval/default.yaml
DEFAULTS = {
    "run": None,
    "eval": {"context_lengths": None, "batches": None, "batch_size": None, "checkpoint": "best", "device": "auto"},
}


@torch.no_grad()
def score(model: torch.nn.Module, batches: list[dict], device: torch.device) -> dict:
    """Token-weighted loss and accuracy of ``model`` over ``batches`` of ``{"input", "target"}`` ``[B, T]``."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, scored
    for batch in batches:
        x, y = batch["input"].to(device), batch["target"].to(device)
        logits = model(x)
        mask = y != IGNORE
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE, reduction="sum")
        correct = ((logits.argmax(-1) == y) & mask).sum()
        totals += torch.stack([loss.double(), correct.double(), mask.sum().double()])
    loss_sum, correct, scored = totals.tolist()  # one host sync per length
    if scored == 0:
        raise ConfigError("eval: no scored target positions in the evaluation batches")
    return {"loss": loss_sum / scored, "accuracy": correct / scored, "scored": int(scored)}


def parse_lengths(value, trained: int) -> list[int]:
    if value is None:
        return [trained, 2 * trained, 4 * trained]
    values = list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 2 for v in values):
        raise ConfigError(f"eval.context_lengths must be a list of integers >= 2, got {value!r}")
    return sorted(set(values))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"eval.device must be auto, cpu, cuda or cuda:<i>, got {name!r}") from None


def evaluate_run(
    run_dir,
    context_lengths=None,
    batches: int | None = None,
    batch_size: int | None = None,
    checkpoint: str = "best",
    device: str = "auto",
) -> dict:
    """Evaluate the run at each context length, write the reports, return the ``eval_context.json`` dict."""
    from famlab.api import load_run
    from famlab.lit.summary import read_summary, update_summary, write_json

    run = load_run(run_dir, which=checkpoint)
    trained = int(run.cfg.model.context)
    lengths = parse_lengths(context_lengths, trained)
    n = int(batches or run.cfg.data.get("val_batches", 8))
    bs = int(batch_size or run.cfg.data.get("batch_size", 8))
    if n < 1 or bs < 1:
        raise ConfigError(f"eval.batches and eval.batch_size must be >= 1, got {n}, {bs}")
    dev = resolve_device(str(device))
    model, dm = run.model.to(dev).eval(), run.datamodule
    synthetic = hasattr(dm, "task")
    results: dict[str, dict] = {}
    for length in lengths:
        try:
            entry = score(model, dm.eval_batches(length, n, bs), dev)
            entry["bpc"] = entry["loss"] * dm.bpc_factor()
        except (ConfigError, RuntimeError, ValueError) as e:  # too long for the data / memory / variant
            entry = {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
        if synthetic and length // 4 > dm.task.num_keys:
            entry["note"] = f"data.num_keys={dm.task.num_keys} < context/4: key-value pairs capped, more queries"
        entry["times_trained"] = length / trained
        results[str(length)] = entry
        print(
            f"context {length:>6}: "
            + (entry.get("error") or f"loss {entry['loss']:.4f}  bpc {entry['bpc']:.4f}  acc {entry['accuracy']:.4f}"),
            file=sys.stderr,
        )
    choices = run.summary.get("choices") or {}
    report = {
        "run": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "trained_context": trained,
        "data": "synthetic recall (accuracy on queried values)" if synthetic else "validation split (next-token)",
        "choices": {k: choices[k] for k in ("position", "attention", "optimizer", "data") if k in choices},
        "batches": n,
        "batch_size": bs,
        "device": str(dev),
        "context_lengths": results,
    }
    out = Path(run.run_dir)
    write_json(out / "eval_context.json", report)
    (out / "eval_context.md").write_text(markdown(report))
    plot(report, out / "plots" / "eval_context.png")
    old = read_summary(out).get("eval") or {}
    update_summary(
        out,
        eval={
            **old,
            "context_lengths": {
                k: {m: v[m] for m in ("loss", "bpc", "accuracy", "scored") if m in v} for k, v in results.items()
            },
            "context_trained": trained,
            "context_checkpoint": str(run.checkpoint),
        },
    )
    return report


def markdown(report: dict) -> str:
    lines = [
        f"# Length generalisation: {Path(report['run']).name}",
        "",
        f"Trained at context {report['trained_context']}; {report['data']}; "
        f"{report['batches']} batches x {report['batch_size']} sequences per length; checkpoint "
        f"`{Path(report['checkpoint']).name}`; " + ", ".join(f"{k}={v}" for k, v in report["choices"].items()),
        "",
        "| context | x trained | loss (nats) | bpc | accuracy | scored tokens |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for length, e in report["context_lengths"].items():
        if "error" in e:
            lines.append(f"| {length} | {e['times_trained']:.2g} | {e['error']} | | | |")
        else:
            lines.append(
                f"| {length} | {e['times_trained']:.2g} | {e['loss']:.4f} | {e['bpc']:.4f} | "
                f"{e['accuracy']:.4f} | {e['scored']} |"
            )
    notes = sorted({e["note"] for e in report["context_lengths"].values() if "note" in e})
    return "\n".join(lines + [""] + [f"Note: {n}" for n in notes]) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    """Loss and accuracy against context length (log2 axis), trained context marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [(int(k), e) for k, e in report["context_lengths"].items() if "error" not in e]
    if not ok:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "loss", "loss (nats)"), (axes[1], "accuracy", "accuracy")):
        ax.plot([k for k, _ in ok], [e[key] for _, e in ok], marker="o")
        ax.axvline(report["trained_context"], color="grey", linestyle="--", label="trained context")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length")
        ax.set_ylabel(label)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{Path(report['run']).name}: " + ", ".join(f"{k}={v}" for k, v in report["choices"].items()))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``famlab evaluate`` / ``python -m famlab.evaluate``: compose ``conf/evaluate.yaml`` with the overrides."""
    from famlab.hydra_cli import compose_cli

    args = list(sys.argv[1:] if argv is None else argv)
    unknown = sorted(
        {a.split("=")[0].lstrip("+~").split(".")[1] for a in args if a.lstrip("+~").startswith("eval.") and "=" in a}
        - set(DEFAULTS["eval"])
    )
    if unknown:
        raise SystemExit(f"famlab.evaluate: unknown eval keys {unknown}; allowed {sorted(DEFAULTS['eval'])}")
    cfg = compose_cli("evaluate", args, "famlab evaluate")
    if cfg is None:  # Hydra answered --help / --cfg
        return 0
    if not cfg.run:
        raise SystemExit("famlab.evaluate: run=<run dir> is required (a directory written by famlab train)")
    e = cfg.eval
    try:
        report = evaluate_run(
            cfg.run,
            OmegaConf.to_object(e.context_lengths) if OmegaConf.is_list(e.context_lengths) else e.context_lengths,
            e.batches,
            e.batch_size,
            str(e.checkpoint),
            str(e.device),
        )
    except ConfigError as err:
        raise SystemExit(f"famlab.evaluate: {err}") from None
    print(json.dumps({k: v.get("loss") for k, v in report["context_lengths"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
