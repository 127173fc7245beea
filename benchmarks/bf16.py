"""Training tokens/s in fp32 against bf16 mixed precision on the CPU, by model size.

``trainer=cpu_bf16`` runs Lightning's ``bf16-mixed``: the forward pass and loss under
``torch.autocast("cpu", torch.bfloat16)``, backward outside it, fp32 weights and optimizer state.
This script runs exactly that step (famlab's model and optimizer built from the config, gradient
clipping at 1.0) on two copies of each model with the same initial weights and the same random
batches (the data module's stream, ``data=embedded`` by default), one per precision, in interleaved blocks of ``--steps`` steps (order alternating each
round), and reports median tokens/s per precision, their ratio, and each copy's last training loss
(bf16 should track fp32). bf16 pays where the matrices are large enough for the CPU's bf16 units
(``avx512_bf16`` / ``amx_tile``) to outweigh the casts.

    python benchmarks/bf16.py                          # model=tiny,small,base; 1 thread; CPU clock
    python benchmarks/bf16.py --models base --rounds 5 --steps 3

Prints the machine (``machine.py``), a table, writes ``benchmarks/results/<date>-<cpu>-bf16.json``
and, as its last line, one JSON object of ``<model>_bf16_over_fp32`` tokens/s ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import record  # noqa: E402

from famlab import api  # noqa: E402
from famlab.build import build_datamodule, build_optimization  # noqa: E402

STEPS = {"tiny": 12, "small": 6, "base": 2}  # steps per timed block (base: ~1-3 s per step on one core)


class Runner:
    """One model copy, its optimizer and a precision; ``block(batches)`` trains on them and returns seconds."""

    def __init__(self, cfg, vocab: int, bf16: bool, clock):
        torch.manual_seed(cfg.seed)
        self.model = api.build_model(cfg, vocab_size=vocab)
        self.model.train()
        factory, _ = build_optimization(cfg, self.model)
        self.opt = factory(self.model)
        self.bf16, self.clock, self.loss = bf16, clock, float("nan")

    def step(self, batch: dict) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(batch["input"])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=-100)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return loss.detach()

    def block(self, batches: list[dict]) -> float:
        if not batches:  # --warmup 0
            return 0.0
        start = self.clock()
        for batch in batches:
            loss = self.step(batch)
        elapsed = self.clock() - start
        self.loss = float(loss)  # host read after the clock stops
        return elapsed


def measure(size: str, args, clock) -> dict:
    cfg = api.compose(
        [f"model={size}", f"seed={args.seed}", f"data={args.data}"]
        + ([f"data.batch_size={args.batch}"] if args.batch else [])
    )
    batch, context = cfg.data.batch_size, cfg.model.context
    steps = args.steps or STEPS.get(size, 4)
    dm = build_datamodule(cfg)
    stream = iter(dm.train_dataloader())
    runners = {"fp32": Runner(cfg, dm.vocab_size, False, clock), "bf16": Runner(cfg, dm.vocab_size, True, clock)}
    warm = [next(stream) for _ in range(args.warmup)]
    for runner in runners.values():
        runner.block(warm)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        batches = [next(stream) for _ in range(steps)]
        for name in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            rates[name].append(batch * context * steps / runners[name].block(batches))
    med = {name: statistics.median(v) for name, v in rates.items()}
    params = sum(p.numel() for p in runners["fp32"].model.parameters())
    return {
        "params": params,
        "batch": batch,
        "context": context,
        "steps_per_block": steps,
        "tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "bf16_over_fp32": round(med["bf16"] / med["fp32"], 3),
        "last_loss": {k: round(r.loss, 4) for k, r in runners.items()},
    }


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,small,base", help="comma list of conf/model options")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved blocks per precision")
    parser.add_argument("--steps", type=int, default=0, help=f"steps per block (0: per model {STEPS})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per precision first")
    parser.add_argument("--batch", type=int, default=0, help="sequences per step (0: the config's data.batch_size)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    parser.add_argument(
        "--clock",
        default="cpu",
        choices=["wall", "cpu"],
        help="cpu: this process's CPU time (steadier on a shared machine); wall: perf_counter",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="embedded", help="conf/data option the batches come from")
    parser.add_argument(
        "--results-dir", default=None, help="where the dated result JSON goes (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = {size: measure(size, args, clock) for size in args.models.split(",") if size}
    print(
        f"fp32 vs bf16-mixed training step on the CPU ({torch.get_num_threads()} threads, {args.clock} clock), "
        f"{args.rounds} interleaved blocks per precision (median tokens/s)"
    )
    print("| model | params | tokens/step | fp32 tok/s | bf16 tok/s | bf16 / fp32 | last loss fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for size, r in results.items():
        print(
            f"| {size} | {r['params'] / 1e6:.2f}M | {r['batch'] * r['context']} | {r['tokens_per_s']['fp32']:.0f} | "
            f"{r['tokens_per_s']['bf16']:.0f} | {r['bf16_over_fp32']:.2f}x | "
            f"{r['last_loss']['fp32']:.3f} / {r['last_loss']['bf16']:.3f} |"
        )
    pays = [s for s, r in results.items() if r["bf16_over_fp32"] > 1.0]
    print(f"bf16 pays (faster than fp32) for: {', '.join(pays) if pays else 'none of these sizes'}")
    ratios = {f"{size}_bf16_over_fp32": r["bf16_over_fp32"] for size, r in results.items()}
    setup = {k: v for k, v in vars(args).items() if k != "results_dir"}
    record("bf16", {"ratios": ratios, "models": results, "setup": setup}, args.results_dir)
    print(json.dumps(ratios))
    return ratios


if __name__ == "__main__":
    main()
