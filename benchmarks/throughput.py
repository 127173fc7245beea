"""Tokens/s of famlab's Lightning training step against a plain PyTorch loop.

Both run the same model, optimizer, scheduler, gradient clipping and batches (the data module's
step-seeded stream); the Lightning side is the real ``python train.py`` path (``famlab.api.train``
with the default callbacks and CSV logging). Variants are interleaved and repeated; the figure is
the median of steady-state tokens/s (the first ``warmup`` steps are excluded).

    python benchmarks/throughput.py [--steps 120] [--repeats 5] [--model small]
    python benchmarks/throughput.py --device cuda --model base     # trainer=gpu (bf16) vs a bf16-autocast loop

On ``--device cuda`` both sides synchronise the GPU before reading the clock at every step (the
step's kernels are finished, not just launched), the Lightning side runs ``trainer=gpu`` (bf16
mixed precision) and the plain loop the same step under ``torch.autocast(bfloat16)``.

Last line: one JSON object ``{"lightning_over_plain": ...}`` (target >= 0.95 on the CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from famlab import api  # noqa: E402
from famlab.build import build_datamodule, build_optimization  # noqa: E402


class StepClock(pl.Callback):
    """Records the wall time at the end of every training batch."""

    times: list[float] = []

    def on_train_start(self, trainer, pl_module):
        StepClock.times = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        StepClock.times.append(clock(pl_module.device))


def clock(device: torch.device | str) -> float:
    """Wall time after the device's queued work has finished (a no-op wait on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def steady_tokens_per_s(times: list[float], warmup: int, tokens_per_step: int) -> float:
    return tokens_per_step * (len(times) - 1 - warmup) / (times[-1] - times[warmup])


def overrides(args, steps: int) -> list[str]:
    device = ["trainer=gpu"] if args.device == "cuda" else []
    return [f"model={args.model}", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
            "data.val_batches=1", "logger=csv", "scheduler.warmup_steps=10", f"data.batch_size={args.batch}", *device]


def lightning_run(args, root: str, i: int) -> float:
    cfg = api.compose([*overrides(args, args.steps), f"out_root={root}", f"run_name=l{i}",
                       "+callbacks.clock._target_=__main__.StepClock"], run_dir=f"{root}/l{i}")
    api.train(cfg)
    return steady_tokens_per_s(StepClock.times, args.warmup, args.batch * cfg.model.context)


def plain_run(args, i: int) -> float:
    cfg = api.compose(overrides(args, args.steps))
    pl.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    model = api.build_model(cfg, vocab_size=dm.vocab_size).to(args.device)
    opt_factory, sched_factory = build_optimization(cfg, model)
    opt = opt_factory(model)
    sched = sched_factory(opt, total_steps=args.steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")
    times = []
    for step, batch in zip(range(args.steps), dm.train_dataloader()):
        x, y = (batch[k].to(args.device, non_blocking=True) for k in ("input", "target"))
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        times.append(clock(args.device))
    return steady_tokens_per_s(times, args.warmup, args.batch * cfg.model.context)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: trainer=gpu (bf16) against a bf16-autocast loop, synchronised around every step")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    results: dict[str, list[float]] = {"plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.repeats):  # interleaved: plain, lightning, plain, lightning, ...
            results["plain"].append(plain_run(args, i))
            results["lightning"].append(lightning_run(args, root, i))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nmodel={args.model} batch={args.batch} steps={args.steps} (first {args.warmup} excluded), "
          f"{args.repeats} interleaved repeats, device={args.device}, torch threads={torch.get_num_threads()}", file=sys.stderr)
    print(f"{'variant':<12}{'median tok/s':>14}   runs")
    for k, v in results.items():
        print(f"{k:<12}{med[k]:>14.0f}   {', '.join(f'{x:.0f}' for x in v)}")
    print(json.dumps({"lightning_over_plain": round(med["lightning"] / med["plain"], 3)}))


if __name__ == "__main__":
    main()
