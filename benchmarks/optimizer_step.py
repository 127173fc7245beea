"""Time ``optimizer.step()`` of every FAM variant against torch AdamW (foreach and fused).

Same ~10.7M-parameter TransformerLM (dims 384, layers 6, heads 6, vocab 256, context 256) for every variant,
each with its own copy of the model and the same fixed random gradients; FAM's analysis is active from the
first timed step (``fam_start_step=0``, after warm-up steps). Variants are interleaved (rotating order) and the
median over repeats is reported. Also reports optimizer-state memory and the share of a full training step
(forward + backward + step, batch 8 x context 256) spent in the FAM step.

    .venv/bin/python benchmarks/optimizer_step.py [--repeats 25] [--device cpu|cuda] [--train-repeats 3]

The LAST printed line is one JSON object with the ratios (``fam_over_adamw`` etc.).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

from famlab.model.transformer import TransformerLM
from famlab.optim import factories
from famlab.optim.fam_config import SEED_ANALYSIS

MODEL = dict(vocab_size=256, dims=384, layers=6, heads=6, context=256)
ANALYSIS = {**SEED_ANALYSIS, "fam_start_step": 0}
FAM_VARIANTS = {
    "fam": dict(analysis=ANALYSIS),
    "fam_adam": dict(base="adam", weight_decay=0.1, analysis=ANALYSIS),
    "fam_temporal": dict(analysis={**ANALYSIS, "spectrum": "temporal", "window": 64}),
    "fam_constant": dict(analysis=None),
}


def build(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if name == "adamw":
        return factories.adamw(model, fused=False)
    if name == "adamw_fused":
        return factories.adamw(model, fused=True)
    return factories.fam(model, **FAM_VARIANTS[name])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )


def time_steps(names: list[str], device: torch.device, repeats: int, warmup: int) -> tuple[dict, dict]:
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
            t0 = time.perf_counter()
            runs[name].step()
            sync(device)
            times[name].append(time.perf_counter() - t0)
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
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (1 by default: on a shared machine a descheduled OpenMP worker stalls "
        "every op at its barrier, which measures the neighbours, not the optimizer)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = ["adamw", "adamw_fused", *FAM_VARIANTS]
    medians, memory = time_steps(names, device, args.repeats, args.warmup)
    n_params = sum(p.numel() for p in TransformerLM(**MODEL).parameters())
    print(
        f"optimizer.step() on TransformerLM {MODEL} ({n_params / 1e6:.2f}M params), device={device}, "
        f"threads={torch.get_num_threads()}, median of {args.repeats}"
    )
    print(f"{'variant':<14} {'step ms':>9} {'x adamw':>8} {'state MB':>9}")
    for name in names:
        print(
            f"{name:<14} {1e3 * medians[name]:>9.2f} {medians[name] / medians['adamw']:>8.2f} "
            f"{memory[name] / 2**20:>9.1f}"
        )
    full, step = train_step_time(device, args.train_repeats)
    print(
        f"train step (fwd+bwd+fam step, batch 8 x {MODEL['context']}): {1e3 * full:.1f} ms, "
        f"fam step {1e3 * step:.1f} ms"
    )
    ratios = {f"{n}_over_adamw": round(medians[n] / medians["adamw"], 3) for n in FAM_VARIANTS}
    ratios["fam_over_adamw_fused"] = round(medians["fam"] / medians["adamw_fused"], 3)
    ratios["fam_state_memory_over_adamw"] = round(memory["fam"] / memory["adamw"], 3)
    ratios["fam_step_fraction_of_train_step"] = round(step / full, 4)
    ratios["device"] = str(device)
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
