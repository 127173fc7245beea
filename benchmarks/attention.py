"""Forward+backward time and peak memory of each attention variant vs full causal SDPA attention.

Each variant is one entry of ``VARIANTS`` (name, builder ``context -> module``, note); add a row
by appending an entry. For every context the variants run interleaved (order rotated every round,
so drift in machine load hits all alike) and the table reports median times. Peak memory is the
largest net allocation during one forward+backward, from ``torch.profiler`` memory events
(``profile_memory=True``; allocations minus frees, sorted by time; parameters and inputs excluded)
on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Times are wall-clock medians; the table
also gives the median process-CPU-time ratio, steadier on a shared machine. One thread by default
(``--threads``): on an oversubscribed 2-core box every multi-threaded op waits for a descheduled
worker, which penalises variants made of many small ops. The last line printed is one JSON
object of ratios ``<variant>_<context>_over_full`` (median wall time) and
``<variant>_<context>_mem_over_full`` (peak memory).

    python benchmarks/attention.py                                  # B=1 D=256 H=4, T=256,1024,4096, 1 thread
    python benchmarks/attention.py --contexts 1024 --rounds 9
    python benchmarks/attention.py --device cuda --dtype bfloat16   # integrated: FlexAttention (backend auto)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from machine import record  # benchmarks/machine.py: CPU model, cores and ISA flags with every result
from torch import nn
from torch.profiler import ProfilerActivity, profile

from famlab.attention.adaptive_span import AdaptiveSpan
from famlab.attention.core import AttentionBase
from famlab.attention.integrated import IntegratedAttention
from famlab.attention.local import slide_win
from famlab.attention.myelinated import MyelinatedLayer
from famlab.attention.standard import StandardAttention
from famlab.model.transformer import Block


class SlidingWindowOnly(AttentionBase):
    """Benchmark-only row: the integrated variant's local branch alone (band, no span, no global)."""

    def __init__(self, dims, head, window):
        super().__init__(dims, head)
        self.window = window

    def forward(self, x, positions, cache=None):
        q, k, v = self.project_qkv(x, positions)
        return self.out(slide_win(q, k, v, self.window))


@dataclass
class Variant:
    name: str
    build: Callable[[int, int, int], nn.Module]  # (context, dims, heads) -> module
    note: str


VARIANTS: list[Variant] = [
    Variant("full", lambda ctx, d, h: StandardAttention(d, h), "StandardAttention, SDPA is_causal"),
    Variant(
        "adaptive_span",
        lambda ctx, d, h: AdaptiveSpan(d, h, max_dist=ctx, init_span=0.25),
        "span = context/4 (+ramp 32), blocked over 128-query blocks",
    ),
    Variant(
        "adaptive_span_init",
        lambda ctx, d, h: AdaptiveSpan(d, h, max_dist=ctx),
        "default init: span = context - 32, the ramp reaches the context edge (no key skipped)",
    ),
    Variant(
        "integrated",
        lambda ctx, d, h: IntegratedAttention(
            d, h, max_dist=ctx, win_size=256, max_span=384, refiner={"enabled": True}, summary_block=64
        ),
        "window 256 + soft span + global attention over 64-token block summaries + refiner",
    ),
    Variant(
        "integrated_full",
        lambda ctx, d, h: IntegratedAttention(
            d, h, max_dist=ctx, win_size=256, max_span=384, refiner={"enabled": True}, global_branch="full"
        ),
        "as integrated, global branch = full causal MHA (global_branch=full)",
    ),
    Variant("slide_win", lambda ctx, d, h: SlidingWindowOnly(d, h, 256), "local branch alone, window 256"),
    Variant(
        "myelinated",
        lambda ctx, d, h: MyelinatedLayer(d, h, layerA=4, max_dist=ctx, skip_compute="never"),
        "4 gated sub-layers + policy + gated MLP, training: every sub-layer computed and masked",
    ),
]


def myelinated_half_skipped_over_all(ctx, dims, heads, batch, device, rounds=9) -> float:
    """Eval forward time, MyelinatedLayer(layerA=4) with sub-layers 1 and 3 skipped by the whole
    batch (real skipping) over the same layer with all four run; median of interleaved rounds."""
    torch.manual_seed(0)
    layers = {"all": MyelinatedLayer(dims, heads, layerA=4, max_dist=ctx).to(device).eval()}
    layers["half"] = MyelinatedLayer(dims, heads, layerA=4, max_dist=ctx).to(device).eval()
    layers["half"].load_state_dict(layers["all"].state_dict())
    with torch.no_grad():
        for i in (1, 3):  # importance ~0 for every token -> the sub-layer is skipped
            layers["half"].node_predictors[i][1].weight.zero_()
            layers["half"].node_predictors[i][1].bias.fill_(-20.0)
        x, positions = torch.randn(batch, ctx, dims, device=device), torch.arange(ctx, device=device)
        times = {"all": [], "half": []}
        for r in range(rounds + 1):
            for name in ("all", "half") if r % 2 else ("half", "all"):
                dt = timed(lambda: layers[name](x, positions), device)[0]  # wall seconds
                times[name].append(dt) if r else None  # round 0 warms up
    assert layers["half"].last_active[1::2].sum() == 0 and layers["all"].last_active.sum() > 0
    return statistics.median(times["half"]) / statistics.median(times["all"])


class Stack(nn.Module):
    """``n`` standard pre-norm blocks (causal SDPA attention + 4x MLP), run in sequence."""

    def __init__(self, n, dims, heads):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dims, StandardAttention(dims, heads)) for _ in range(n))

    def forward(self, x, positions):
        for block in self.blocks:
            x = block(x, positions)
        return x


def flops_per_token(block: nn.Module, ctx: int, dims: int) -> float:
    """Analytic forward FLOPs per token: 2 per Linear weight, plus attention scores and weighted
    values: ``2 * dims * ctx`` per causal SDPA layer (half the keys on average; the kernel skips
    the masked half), ``4 * dims * ctx`` per myelinated sub-layer (dense scores under a boolean mask)."""
    linear = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
    dense = sum(1 for m in block.modules() if type(m).__name__ == "MyelinSublayer")
    causal = sum(1 for m in block.modules() if isinstance(m, StandardAttention))
    return 2.0 * linear + (2.0 * causal + 4.0 * dense) * dims * ctx


def myelinated_cost(ctx, dims, heads, batch, device, rounds=5) -> dict[str, float]:
    """A myelinated block (default ``layerA=3`` mixer + the block's MLP) against stacks of standard
    blocks with the same parameter count and with the same analytic FLOPs.

    Training: fwd+bwd time ratios (the myelinated layer masks every sub-layer in training, so its
    cost does not depend on the skip rate). Eval forward: the fraction ``s`` of sub-layer work that
    whole-batch skipping must remove to match a standard stack, from ``t(s) = t_none + (1 - s)
    (t_all - t_none)`` with ``t_all`` (every sub-layer run) and ``t_none`` (every sub-layer skipped;
    the policy, node predictors, memory gate and MLPs remain); > 1 means no skip rate breaks even.
    Also the share of an eval forward taken by the ``layerA`` host reads of ``skip_compute=eval``
    (timed directly; on the CPU the device is the host, so no queue drains).
    """
    torch.manual_seed(0)
    myel = Block(dims, MyelinatedLayer(dims, heads, max_dist=ctx, skip_compute="never"))
    n_par = sum(p.numel() for p in myel.parameters()) / sum(p.numel() for p in Stack(1, dims, heads).parameters())
    n_flop = flops_per_token(myel, ctx, dims) / flops_per_token(Stack(1, dims, heads), ctx, dims)
    sizes = {"params": max(1, round(n_par)), "flops": max(1, round(n_flop)), "one": 1}
    mods = {"myel": myel, **{f"std{n}": Stack(n, dims, heads) for n in set(sizes.values())}}
    mods = {k: m.to(device) for k, m in mods.items()}
    ref = {key: f"std{n}" for key, n in sizes.items()}  # equal sizes share one measurement
    x = torch.randn(batch, ctx, dims, device=device, requires_grad=True)
    positions = torch.arange(ctx, device=device)

    def median_times(steps):
        times = {k: [] for k in steps}
        for r in range(rounds + 1):
            for k in list(steps) if r % 2 else list(steps)[::-1]:
                dt = timed(steps[k], device)[0]
                times[k].append(dt) if r else None  # round 0 warms up
        return {k: statistics.median(v) for k, v in times.items()}

    train = median_times({k: make_step(m.train(), x, positions) for k, m in mods.items()})
    train.update({key: train[name] for key, name in ref.items()})
    none = copy.deepcopy(myel).eval()
    with torch.no_grad():
        for pred in none.attn.node_predictors:  # importance ~0 everywhere: every sub-layer skipped
            pred[1].weight.zero_()
            pred[1].bias.fill_(-20.0)
        none.attn.skip_compute = "eval"
        xe = x.detach()
        steps = {"all": lambda: myel.eval()(xe, positions), "none": lambda: none(xe, positions)}
        steps.update({k: (lambda m=m: m.eval()(xe, positions)) for k, m in mods.items() if k != "myel"})
        evals = median_times(steps)
        evals.update({key: evals[name] for key, name in ref.items()})
        # the host read skip_compute=eval makes per sub-layer: bool(any(active > 0)) on [B, T, 1]
        active = torch.ones(batch, ctx, 1, device=device)
        start = time.perf_counter()
        for _ in range(1000):
            bool((active > 0).any())
        read_s = (time.perf_counter() - start) / 1000
    assert none.attn.last_active.sum() == 0
    sub = evals["all"] - evals["none"]
    return {
        "myelinated_block_params_over_standard_block": round(n_par, 2),
        "myelinated_block_flops_over_standard_block": round(n_flop, 2),
        "myelinated_train_over_one_block": round(train["myel"] / train["one"], 3),
        "myelinated_train_over_same_params": round(train["myel"] / train["params"], 3),
        "myelinated_train_over_same_flops": round(train["myel"] / train["flops"], 3),
        "myelinated_eval_over_same_params": round(evals["all"] / evals["params"], 3),
        "myelinated_eval_break_even_skip_same_params": round((evals["all"] - evals["params"]) / sub, 3),
        "myelinated_eval_break_even_skip_same_flops": round((evals["all"] - evals["flops"]) / sub, 3),
        "standard_blocks_same_params": sizes["params"],
        "standard_blocks_same_flops": sizes["flops"],
        "myelinated_eval_host_reads_share": round(myel.attn.layerA * read_s / evals["all"], 6),
    }


def make_step(module: nn.Module, x: torch.Tensor, positions: torch.Tensor):
    params = [p for p in module.parameters() if p.requires_grad]
    grad_out = torch.randn_like(x)

    def step():
        y = module(x, positions)
        torch.autograd.grad(y, [x, *params], grad_out)

    return step


def timed(step, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def peak_memory(step, device: torch.device) -> int:
    """Peak bytes allocated by one step beyond what existed before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds per context (0: 15/9/5 by size)")
    parser.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS])
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--results-dir", default=None, help="where the dated result JSON goes (default benchmarks/results)"
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="parameters and inputs of the compared modules (bfloat16: as trained on a GPU)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    chosen = [v for v in VARIANTS if v.name in args.variants]
    if not chosen or chosen[0].name != "full":
        raise SystemExit("--variants must include 'full' (the reference)")
    print(
        f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} batch={args.batch} dims={args.dims} "
        f"heads={args.heads}"
    )
    rows, ratios = [], {}
    for ctx in args.contexts:
        torch.manual_seed(0)
        x = torch.randn(args.batch, ctx, args.dims, device=device, dtype=dtype, requires_grad=True)
        positions = torch.arange(ctx, device=device)
        steps = {}
        for v in chosen:
            module = v.build(ctx, args.dims, args.heads).to(device=device, dtype=dtype).train()
            steps[v.name] = make_step(module, x, positions)
            steps[v.name]()  # warm-up
        memory = {name: peak_memory(step, device) for name, step in steps.items()}
        rounds = args.rounds or (15 if ctx <= 256 else 9 if ctx <= 1024 else 5)
        times = {name: [] for name in steps}
        order = list(steps)
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                times[name].append(timed(steps[name], device))
        med = {name: statistics.median(w for w, _ in t) for name, t in times.items()}
        cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
        for v in chosen:
            t, m = med[v.name], memory[v.name]
            rows.append(
                (
                    ctx,
                    v.name,
                    t * 1e3,
                    t / med["full"],
                    cpu[v.name] / cpu["full"],
                    m / 2**20,
                    m / max(memory["full"], 1),
                    v.note,
                )
            )
            if v.name != "full":
                ratios[f"{v.name}_{ctx}_over_full"] = round(t / med["full"], 3)
                ratios[f"{v.name}_{ctx}_mem_over_full"] = round(m / max(memory["full"], 1), 3)
    print(
        f"{'context':>7}  {'variant':<14} {'fwd+bwd ms':>10} {'x full':>7} {'cpu x full':>10} "
        f"{'peak MiB':>9} {'x full':>7}  note"
    )
    for ctx, name, ms, rt, rc, mib, rm, note in rows:
        print(f"{ctx:>7}  {name:<14} {ms:>10.1f} {rt:>7.2f} {rc:>10.2f} {mib:>9.1f} {rm:>7.2f}  {note}")
    for ctx in args.contexts:
        if {"adaptive_span", "adaptive_span_init"} <= set(args.variants):  # keys skipped by a shrunk span
            ratios[f"adaptive_span_{ctx}_over_init"] = round(
                ratios[f"adaptive_span_{ctx}_over_full"] / ratios[f"adaptive_span_init_{ctx}_over_full"], 3
            )
    if "myelinated" in args.variants:
        ratios["myelinated_half_skipped_over_all"] = round(
            myelinated_half_skipped_over_all(args.contexts[-1], args.dims, args.heads, args.batch, device), 3
        )
        ratios.update(myelinated_cost(args.contexts[-1], args.dims, args.heads, args.batch, device))
    record("attention", {"ratios": ratios, "args": vars(args)}, args.results_dir)
    print(json.dumps(ratios))
    return ratios


if __name__ == "__main__":
    main()
