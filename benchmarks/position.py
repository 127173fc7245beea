"""Cost of each position scheme inside attention: rotate q and k, causal SDPA, backward.

Every scheme runs the same shapes; rounds interleave the schemes (order rotated each round) so
drift in machine load hits all of them alike; the table reports medians. It prints the machine
(CPU model, cores, ISA flags; ``machine.py``), writes the medians, ratios and machine to
``benchmarks/results/<date>-<cpu>-position.json`` and, as its last line, prints one JSON object of
``<scheme>_over_rotary`` median-time ratios.

    python benchmarks/position.py                      # B=8 H=6 T=256 hd=64 on CPU
    python benchmarks/position.py --device cuda --dtype bfloat16 --rounds 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from machine import record

from famlab.position.compact import CompactRotations
from famlab.position.none import NoPosition
from famlab.position.projection import ProjectionRotary
from famlab.position.quaternion import QuaternionRotary
from famlab.position.rotary import Rotary

SCHEMES = {
    "rotary": lambda hd: Rotary(hd),
    "quaternion": lambda hd: QuaternionRotary(hd),
    "compact": lambda hd: CompactRotations(hd),
    "projection": lambda hd: ProjectionRotary(hd),
    "none": lambda hd: NoPosition(hd),
}


def make_step(scheme, q, k, v, positions, grad_out):
    """One forward+backward of rotated causal attention; returns nothing (gradients discarded)."""
    params = [p for p in scheme.parameters() if p.requires_grad]

    def step():
        y = F.scaled_dot_product_attention(
            scheme.rotate_qk(q, positions), scheme.rotate_qk(k, positions), v, is_causal=True
        )
        torch.autograd.grad(y, [q, k, v, *params], grad_out)

    return step


def timed(step, device: torch.device, clock=time.perf_counter) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared CPU box)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="comma list; rotary is always included")
    parser.add_argument(
        "--results-dir", default=None, help="where the dated result JSON goes (default benchmarks/results)"
    )
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures host CPU time; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = ["rotary"] + [n for n in args.schemes.split(",") if n and n != "rotary"]
    unknown = set(names) - set(SCHEMES)
    if unknown:
        raise SystemExit(f"--schemes: unknown {sorted(unknown)}; allowed {sorted(SCHEMES)}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v, grad_out = (torch.randn(shape, generator=gen).to(device, dtype).requires_grad_() for _ in range(4))
    positions = torch.arange(args.seq, device=device)
    steps = {}
    for name in names:
        torch.manual_seed(0)
        steps[name] = make_step(SCHEMES[name](args.head_dim).to(device), q, k, v, positions, grad_out)
    for step in steps.values():
        for _ in range(args.warmup):
            timed(step, device, clock)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(steps[name], device, clock))

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["rotary"]
    print(
        f"attention fwd+bwd, B={args.batch} H={args.heads} T={args.seq} hd={args.head_dim} "
        f"{args.dtype} on {args.device} ({torch.get_num_threads()} threads, {args.clock} clock), {args.rounds} interleaved rounds (median)"
    )
    print("| scheme | median ms | over rotary |\n|---|---:|---:|")
    for name in names:
        print(f"| {name} | {1e3 * medians[name]:.2f} | {medians[name] / base:.2f}x |")
    ratios = {f"{name}_over_rotary": round(medians[name] / base, 3) for name in names if name != "rotary"}
    setup = {k: v for k, v in vars(args).items() if k != "results_dir"}
    record(
        "position",
        {
            "ratios": ratios,
            "median_ms": {n: round(1e3 * m, 3) for n, m in medians.items()},
            "setup": setup,
            "torch_threads": torch.get_num_threads(),
        },
        args.results_dir,
    )
    print(json.dumps(ratios))
    return ratios


if __name__ == "__main__":
    main()
