"""Time ``optimizer.step()`` of every FAM option against torch AdamW (foreach and fused).

Every optimizer is built from its ``conf/optimizer/*.yaml`` (AdamW with ``fused`` forced false / true), so
``fam`` runs at its default settings, analysis interval included; ``fam_every_step`` is the same optimizer
analysing every step, ``fam_no_decay`` the default with ``weight_decay=0`` (the original optimizer's default;
coupled L2 costs one more pass over the momentum per step). Same ~10.7M-parameter TransformerLM (dims 384, layers 6, heads 6, vocab 256, context 256)
for every variant, each with its own copy of the model and the same fixed random gradients; FAM's analysis is
active from the first timed step (``analysis.fam_start_step=0``, after warm-up steps).

One timed sample of a variant is a block of consecutive steps (``--block``, rounded up to a whole number of
its analysis intervals), so every block holds the variant's share of analysis steps and the per-step time
(block time / steps) is the amortised cost; a median over single steps would mostly see the cheap steps
between analyses. On the CPU the clock is the process's CPU time by default (``--clock wall`` for wall
time), so time spent descheduled on a shared machine is not counted. Variants are interleaved (rotating order), medians over repeats. Also reports optimizer
state memory and the share of a full training step (forward + backward + step, batch 8 x context 256) spent
in the FAM step. Prints the machine (CPU model, cores, ISA flags) and writes
``benchmarks/results/<date>-<cpu>-optimizer_step.json``.

    .venv/bin/python benchmarks/optimizer_step.py [--repeats 25] [--device cpu|cuda] [--train-repeats 3]

The LAST printed line is one JSON object with the ratios (``fam_over_adamw_fused`` etc.).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from machine import record  # benchmarks/machine.py: CPU model, cores and ISA flags with every result

from famlab.model.transformer import TransformerLM

CONF = Path(__file__).resolve().parents[1] / "conf"
MODEL = dict(vocab_size=256, dims=384, layers=6, heads=6, context=256)
#: variant -> (conf/optimizer option, overrides)
VARIANTS = {
    "adamw": ("adamw", ["optimizer.fused=false"]),
    "adamw_fused": ("adamw", ["optimizer.fused=true"]),
    "fam": ("fam", ["optimizer.analysis.fam_start_step=0"]),
    "fam_every_step": ("fam_every_step", ["optimizer.analysis.fam_start_step=0"]),
    "fam_no_decay": ("fam", ["optimizer.analysis.fam_start_step=0", "optimizer.weight_decay=0"]),
    "fam_adam": ("fam_adam", ["optimizer.analysis.fam_start_step=0"]),
    "fam_temporal": ("fam_temporal", ["optimizer.analysis.fam_start_step=0"]),
    "fam_constant": ("fam_constant", []),
}
FAM_VARIANTS = [name for name in VARIANTS if name.startswith("fam")]


def config(name: str):
    option, overrides = VARIANTS[name]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+optimizer={option}", *overrides])["optimizer"]


def interval(name: str) -> int:
    analysis = config(name).get("analysis")
    return int(analysis.interval) if analysis is not None else 1


def build(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    return instantiate(config(name))(model)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )


def time_steps(
    names: list[str], device: torch.device, repeats: int, warmup: int, blocks: dict, clock=time.perf_counter
) -> tuple[dict, dict]:
    """Median seconds per step (over ``repeats`` blocks of ``blocks[name]`` steps) and state bytes per variant."""
    torch.manual_seed(0)
    base = TransformerLM(**MODEL).to(device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    grads = [1e-3 * torch.randn(p.shape, generator=gen).to(device) for p in base.parameters()]
    runs = {}
    for name in names:
        model = copy.deepcopy(base)
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opt = build(name, model)
        for _ in range(warmup):
            opt.step()
        runs[name] = opt
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # interleave, rotating start
        for name in order:
            sync(device)
            t0 = clock()
            for _ in range(blocks[name]):
                runs[name].step()
            sync(device)
            times[name].append((clock() - t0) / blocks[name])
    medians = {n: statistics.median(t) for n, t in times.items()}
    memory = {n: state_bytes(opt) for n, opt in runs.items()}
    return medians, memory


def train_step_time(device: torch.device, repeats: int, batch: int = 8) -> tuple[float, float]:
    """Median (full fwd+bwd+step, step alone) seconds for optimizer=fam at the base model size."""
    torch.manual_seed(0)
    model = TransformerLM(**MODEL).to(device)
    opt = build("fam", model)
    x = torch.randint(0, MODEL["vocab_size"], (batch, MODEL["context"] + 1), device=device)
    full, step = [], []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t1 = time.perf_counter()
        opt.step()
        sync(device)
        t2 = time.perf_counter()
        if i:  # first iteration is warm-up
            full.append(t2 - t0)
            step.append(t2 - t1)
    return statistics.median(full), statistics.median(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--block", type=int, default=8, help="steps per timed sample (rounded up to whole intervals)")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1 by default: on a shared machine a descheduled OpenMP worker stalls "
        "every op at its barrier, which measures the neighbours, not the optimizer)",
    )
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default=None,
        help="cpu: this process's CPU time (steadier on a shared machine; default on --device cpu); "
        "wall: perf_counter with synchronize (default and only choice on cuda)",
    )
    parser.add_argument(
        "--results-dir", default=None, help="where the dated result JSON goes (default benchmarks/results)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.clock = args.clock or ("cpu" if device.type == "cpu" else "wall")
    if args.clock == "cpu" and device.type != "cpu":
        raise SystemExit("--clock cpu measures host CPU time; use --clock wall with --device cuda")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = list(VARIANTS)
    intervals = {n: interval(n) for n in FAM_VARIANTS}
    blocks = {n: intervals.get(n, 1) * math.ceil(args.block / intervals.get(n, 1)) for n in names}
    medians, memory = time_steps(names, device, args.repeats, args.warmup, blocks, clock)
    n_params = sum(p.numel() for p in TransformerLM(**MODEL).parameters())
    print(
        f"optimizer.step() on TransformerLM {MODEL} ({n_params / 1e6:.2f}M params), device={device}, "
        f"threads={torch.get_num_threads()}, {args.clock} clock, median of {args.repeats} blocks of >= {args.block} steps"
    )
    print(f"{'variant':<15} {'interval':>8} {'step ms':>9} {'x adamw':>8} {'x fused':>8} {'state MB':>9}")
    for name in names:
        print(
            f"{name:<15} {intervals.get(name, '-'):>8} {1e3 * medians[name]:>9.2f} "
            f"{medians[name] / medians['adamw']:>8.2f} {medians[name] / medians['adamw_fused']:>8.2f} "
            f"{memory[name] / 2**20:>9.1f}"
        )
    full, step = train_step_time(device, args.train_repeats)
    print(
        f"train step (fwd+bwd+fam step, batch 8 x {MODEL['context']}): {1e3 * full:.1f} ms, "
        f"fam step {1e3 * step:.1f} ms"
    )
    ratios = {f"{n}_over_adamw": round(medians[n] / medians["adamw"], 3) for n in FAM_VARIANTS}
    ratios["fam_over_adamw_fused"] = round(medians["fam"] / medians["adamw_fused"], 3)
    for name in ("fam_every_step", "fam_no_decay", "fam_constant"):
        ratios[f"{name}_over_adamw_fused"] = round(medians[name] / medians["adamw_fused"], 3)
    ratios["fam_state_memory_over_adamw"] = round(memory["fam"] / memory["adamw"], 3)
    ratios["fam_step_fraction_of_train_step"] = round(step / full, 4)
    ratios["fam_interval"] = intervals["fam"]
    ratios["device"] = str(device)
    setup = {k: v for k, v in vars(args).items() if k != "results_dir"}
    record(
        "optimizer_step",
        {
            "ratios": ratios,
            "median_ms": {n: round(1e3 * m, 3) for n, m in medians.items()},
            "intervals": intervals,
            "blocks": blocks,
            "setup": setup,
        },
        args.results_dir,
    )
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
