"""Where a famlab training step's time goes, per Lightning hook and callback (CPU, process time).

Runs the Lightning side of ``throughput.py`` (the real ``famlab.api.train`` path, default callbacks,
CSV logging) with Lightning's hook dispatch wrapped by timers: every callback hook, every
LightningModule hook (``optimizer_step`` holds the forward, backward, clipping and update), the
data fetch, and the attention-statistics recording of the logging steps. Only the steady-state
steps count (after the first ``--warmup`` steps, before the final validation), the ones
``throughput.py`` times. Prints ms per training step, largest first (a hook called inside another,
such as the callbacks' ``on_before_optimizer_step`` inside ``optimizer_step``, is also counted in
it); hooks under ``--min-ms`` are summed into one line.

    python benchmarks/step_breakdown.py [--shape nano] [--steps 200] [--override callbacks.progress_bar=null]

The wrapping replaces private Lightning functions (``lightning.pytorch.trainer.call``); it is a
measuring aid, not part of training.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import throughput as tp
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping
from lightning.pytorch.loops import fetchers
from lightning.pytorch.trainer import call

import __main__
from famlab.attention import core

TOTAL: dict[str, float] = collections.defaultdict(float)
WINDOW = {"on": False, "first": 20, "last": 200}
clk = time.process_time


class WindowedClock(tp.StepClock):
    """``throughput.StepClock`` that also opens the timing window after the warm-up steps and closes
    it after the last training step (the final validation and checkpoint are not counted)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == WINDOW["first"]:
            TOTAL.clear()
        WINDOW["on"] = WINDOW["first"] <= trainer.global_step < WINDOW["last"]


__main__.StepClock = WindowedClock  # the throughput overrides name it as __main__.StepClock


def timed(key: str, fn, *args, **kwargs):
    t0 = clk()
    try:
        return fn(*args, **kwargs)
    finally:
        if WINDOW["on"]:
            TOTAL[key] += clk() - t0


def install() -> None:
    lm_hook, fetch_next, record = (
        call._call_lightning_module_hook,
        fetchers._PrefetchDataFetcher.__next__,
        core.AttentionBase._record,
    )

    def callback_hooks(trainer, hook_name, *args, monitoring_callbacks=None, **kwargs):
        """Lightning's ``_call_callback_hooks`` (the hook's name set on the module, so callbacks can log),
        each callback's hook timed."""
        pl_module = trainer.lightning_module
        previous, pl_module._current_fx_name = pl_module._current_fx_name, hook_name
        monitoring = (EarlyStopping, Checkpoint)
        for cb in trainer.callbacks:
            if monitoring_callbacks is not None and isinstance(cb, monitoring) != monitoring_callbacks:
                continue
            fn = getattr(cb, hook_name)
            if callable(fn):
                timed(f"callback {type(cb).__name__}.{hook_name}", fn, trainer, pl_module, *args, **kwargs)
        pl_module._current_fx_name = previous

    call._call_callback_hooks = callback_hooks
    call._call_lightning_module_hook = lambda trainer, hook_name, *a, pl_module=None, **k: timed(
        f"module {hook_name}", lm_hook, trainer, hook_name, *a, pl_module=pl_module, **k
    )
    fetchers._PrefetchDataFetcher.__next__ = lambda self: timed(
        "data fetch (Lightning fetcher + DataLoader)", fetch_next, self
    )
    core.AttentionBase._record = lambda self, *a: timed("attention statistics (logging steps)", record, self, *a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="nano", choices=sorted(tp.SHAPES))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20, help="steps not counted at the start")
    ap.add_argument("--min-ms", type=float, default=0.01)
    ap.add_argument("--override", action="append", default=[], help="an extra training override (repeatable)")
    args = ap.parse_args()
    args.model, args.batch, args.device = None, tp.SHAPES[args.shape][1], "cpu"
    WINDOW.update(first=args.warmup, last=args.steps)
    torch.set_num_threads(1)
    tp.CLOCK["fn"] = clk
    install()
    with tempfile.TemporaryDirectory() as root:
        tokens_per_s = tp.lightning_run(args, root, 0)
    step_ms = 1000 * args.batch * tp.api.compose(tp.overrides(args, args.steps)).model.context / tokens_per_s
    counted = args.steps - args.warmup
    print(
        f"\nshape={args.shape}: {step_ms:.2f} ms per step (steady state, process time), steps {args.warmup}-{args.steps}"
    )
    rest = 0.0
    for key, total in sorted(TOTAL.items(), key=lambda kv: -kv[1]):
        ms = 1000 * total / counted
        if ms < args.min_ms:
            rest += ms
        else:
            print(f"{key:<60}{ms:8.3f} ms/step")
    print(f"{'(every other hook, summed)':<60}{rest:8.3f} ms/step")


if __name__ == "__main__":
    main()
