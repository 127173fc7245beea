"""Tokens/s of famlab's Lightning training step against a plain PyTorch loop.

Three variants, interleaved and repeated; each figure is the median of steady-state tokens/s (the
first ``warmup`` steps are excluded):

* ``lightning``: the real ``python train.py`` path (``famlab.api.train`` with the default callbacks
  and CSV logging);
* ``plain``: famlab's model, optimizer, scheduler and step-seeded data stream in a bare loop;
* ``minimal``: an independent nanoGPT-style loop (its own pre-norm GPT with the same shape and no
  position encoding or learned positions, ``torch.optim.AdamW`` with the same groups and settings,
  clipping at 1.0, warm-up + cosine as a ``LambdaLR``, batches gathered from the same token
  tensor with one generator). It measures what famlab's model and data path cost as well.

Shapes (``--shape``): ``default`` is ``model=small`` at 16 x 128 tokens per step with rotary
positions; ``nano`` is nanoGPT's CPU shape (4 layers, 4 heads, 128 dims, context 64, batch 12:
768 tokens per step, ``position=none``), where a fixed per-step cost shows most.
``--clock cpu`` reads the process CPU time instead of the wall clock (with one intra-op thread it
does not count time spent descheduled on a shared machine).

    python benchmarks/throughput.py [--shape nano] [--clock cpu] [--steps 120] [--repeats 5]
    python benchmarks/throughput.py --shape nano --override callbacks.progress_bar=null   # ablate a feature
    python benchmarks/throughput.py --device cuda --model base     # trainer=gpu (bf16) vs a bf16-autocast loop

On ``--device cuda`` both sides synchronise the GPU before reading the clock at every step (the
step's kernels are finished, not just launched), the Lightning side runs ``trainer=gpu`` (bf16
mixed precision) and the plain loop the same step under ``torch.autocast(bfloat16)``.

Last line: one JSON object ``{"lightning_over_plain": ..., "lightning_over_minimal": ...}`` (target
>= 0.95 on the CPU at both shapes) with the per-step overhead in ms against the minimal loop.
"""

from __future__ import annotations

import argparse
import json
import math
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
from machine import record  # noqa: E402

from famlab import api  # noqa: E402
from famlab.build import build_datamodule, build_optimization  # noqa: E402


class StepClock(pl.Callback):
    """Records the wall time at the end of every training batch."""

    times: list[float] = []

    def on_train_start(self, trainer, pl_module):
        StepClock.times = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        StepClock.times.append(clock(pl_module.device))


CLOCK = {"fn": time.perf_counter}


def clock(device: torch.device | str) -> float:
    """Wall (or process CPU, ``--clock cpu``) time after the device's queued work has finished."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return CLOCK["fn"]()


SHAPES = {  # name -> (overrides, batch)
    "default": (["model=small"], 16),
    "nano": (["model=small", "model.context=64", "position=none"], 12),
}


def steady_tokens_per_s(times: list[float], warmup: int, tokens_per_step: int) -> float:
    return tokens_per_step * (len(times) - 1 - warmup) / (times[-1] - times[warmup])


def overrides(args, steps: int) -> list[str]:
    device = ["trainer=gpu"] if args.device == "cuda" else []
    shape = SHAPES[args.shape][0] if args.model is None else [f"model={args.model}"]
    return [
        *shape,
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "threads=1",
        "data.val_batches=1",
        "logger=csv",
        "scheduler.warmup_steps=10",
        f"data.batch_size={args.batch}",
        *device,
    ]


def lightning_run(args, root: str, i: int) -> float:
    cfg = api.compose(
        [
            *overrides(args, args.steps),
            *args.override,
            f"out_root={root}",
            f"run_name=l{i}",
            "+callbacks.clock._target_=__main__.StepClock",
            "allow_targets=[__main__.StepClock]",
        ],
        run_dir=f"{root}/l{i}",
    )
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


class MinimalGPT(torch.nn.Module):
    """nanoGPT's model: token (+ optional learned position) embedding, pre-norm blocks of causal SDPA
    attention and a GELU MLP, final norm, head tied to the embedding; ``[B, T] -> [B, T, vocab]``."""

    def __init__(self, vocab: int, dims: int, layers: int, heads: int, context: int, learned_pos: bool):
        super().__init__()
        nn = torch.nn
        self.heads = heads
        self.tok = nn.Embedding(vocab, dims)
        self.pos = nn.Embedding(context, dims) if learned_pos else None
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(dims),
                    "qkv": nn.Linear(dims, 3 * dims, bias=False),
                    "proj": nn.Linear(dims, dims, bias=False),
                    "ln2": nn.LayerNorm(dims),
                    "fc": nn.Linear(dims, 4 * dims, bias=False),
                    "out": nn.Linear(4 * dims, dims, bias=False),
                }
            )
            for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dims)
        self.head = nn.Linear(dims, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                torch.nn.init.normal_(
                    p, std=0.02 / (math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 1)
                )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.tok(idx)
        if self.pos is not None:
            x = x + self.pos.weight[:T]
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](x)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b["proj"](y.transpose(1, 2).reshape(B, T, -1))
            x = x + b["out"](F.gelu(b["fc"](b["ln2"](x))))
        return self.head(self.ln_f(x))


def minimal_run(args, i: int) -> float:
    """The independent loop: nanoGPT's training step on the same tokens, shape and hyper-parameters."""
    cfg = api.compose(overrides(args, args.steps))
    dm = build_datamodule(cfg).prepare()
    store = dm.train_tokens
    data = store if isinstance(store, torch.Tensor) else store.to_tensor()
    m, o = cfg.model, cfg.optimizer
    torch.manual_seed(0)
    model = MinimalGPT(dm.vocab_size, m.dims, m.layers, m.heads, m.context, args.learned_pos).to(args.device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(o.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(o.lr),
        betas=tuple(o.betas),
        eps=float(o.eps),
        fused=args.device == "cuda" or args.fused,
        foreach=None if args.device == "cuda" or args.fused else True,
    )
    warm, total, floor = int(cfg.scheduler.warmup_steps), args.steps, float(cfg.scheduler.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda e: (
            (e + 1) / warm
            if e < warm
            else floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (e - warm) / (total - warm))))
        ),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")
    g = torch.Generator().manual_seed(0)
    offsets = torch.arange(m.context + 1)
    times = []
    for _ in range(args.steps):
        starts = torch.randint(0, data.numel() - m.context - 1, (args.batch,), generator=g)
        w = data[starts[:, None] + offsets].to(args.device, non_blocking=True)
        x, y = w[:, :-1], w[:, 1:]
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        times.append(clock(args.device))
    return steady_tokens_per_s(times, args.warmup, args.batch * m.context)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--shape",
        default="default",
        choices=sorted(SHAPES),
        help="default: model=small, 16 x 128 tokens, rotary; nano: 4x4x128, 12 x 64 tokens, position=none",
    )
    ap.add_argument(
        "--model", default=None, help="a model= preset instead of the shape's model (default shape's positions)"
    )
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: the shape's)")
    ap.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: process CPU time (one thread; ignores time descheduled on a shared machine)",
    )
    ap.add_argument(
        "--learned-pos", action="store_true", help="minimal loop: learned positions (famlab side keeps the shape's)"
    )
    ap.add_argument(
        "--override",
        action="append",
        default=[],
        help="an extra override for the Lightning side only, e.g. callbacks.progress_bar=null (repeatable)",
    )
    ap.add_argument(
        "--fused", action="store_true", help="minimal loop: fused AdamW on the CPU as well (famlab: foreach on CPU)"
    )
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: trainer=gpu (bf16) against a bf16-autocast loop, synchronised around every step",
    )
    ap.add_argument("--results-dir", default=None, help="where the dated result JSON goes (default benchmarks/results)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    if args.batch is None:
        args.batch = SHAPES[args.shape][1]
    if args.clock == "cpu":
        if args.device == "cuda":
            ap.error("--clock cpu: CPU only")
        CLOCK["fn"] = time.process_time
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {"minimal": [], "plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as root:
        for i in range(args.repeats):  # interleaved: minimal, plain, lightning, minimal, ...
            results["minimal"].append(minimal_run(args, i))
            results["plain"].append(plain_run(args, i))
            results["lightning"].append(lightning_run(args, root, i))
    med = {k: statistics.median(v) for k, v in results.items()}
    tokens = args.batch * api.compose(overrides(args, args.steps)).model.context
    overhead_ms = 1000 * tokens * (1 / med["lightning"] - 1 / med["minimal"])
    print(
        f"\nshape={args.shape} model={args.model} batch={args.batch} clock={args.clock} steps={args.steps} (first {args.warmup} excluded), "
        f"{args.repeats} interleaved repeats, device={args.device}, torch threads={torch.get_num_threads()}",
        file=sys.stderr,
    )
    print(f"{'variant':<12}{'median tok/s':>14}   runs")
    for k, v in results.items():
        print(f"{k:<12}{med[k]:>14.0f}   {', '.join(f'{x:.0f}' for x in v)}")
    ratios = {
        "shape": args.shape,
        "clock": args.clock,
        "lightning_over_plain": round(med["lightning"] / med["plain"], 3),
        "lightning_over_minimal": round(med["lightning"] / med["minimal"], 3),
        "plain_over_minimal": round(med["plain"] / med["minimal"], 3),
        "overhead_ms_per_step": round(overhead_ms, 2),
    }
    setup = {k: v for k, v in vars(args).items() if k != "results_dir"}
    record(
        f"throughput-{args.shape}" + ("" if args.device == "cpu" else f"-{args.device}"),
        {
            "ratios": ratios,
            "tokens_per_s": {k: [round(x, 1) for x in v] for k, v in results.items()},
            "setup": setup,
            "load_average": [round(x, 2) for x in os.getloadavg()],  # other jobs on the machine after the run
        },
        args.results_dir,
    )
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
