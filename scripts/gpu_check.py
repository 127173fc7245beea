"""``make gpu-check``: everything that only a CUDA GPU can show, as one command of <= 10 minutes.

Steps (each a subprocess with its own time limit, cut to what is left of the total budget; a step
with under 30 s left is skipped and reported as such):

1. ``gpu_tests``: ``pytest -m gpu`` outside ``tests/attention`` (bf16 training through ``trainer=gpu``,
   fused AdamW and FAM on CUDA, ``torch.compile`` of ``gpt2_small``).
2. ``flex_vs_blocked``: ``pytest -m gpu tests/attention`` (the FlexAttention path of ``integrated``
   against the blocked path: forward, gradients, nothing leaked).
3. ``train_base``: ``model=base trainer=gpu`` for 300 steps; tokens/s, MFU, final validation loss.
4. ``bench_*``: every benchmark that takes ``--device cuda`` (throughput, optimizer_step, position,
   attention); each prints one JSON object as its last line, recorded as is.
5. ``claim_sweep``: a reduced ``claim_convergence_smoke`` sweep (12 jobs) on the one GPU with
   several joblib workers at once, then ``famlab compare`` on it.

Writes ``benchmarks/results/<date>-gpu-<device>.json`` (every step's command, exit status, time,
figures and verdict, plus the summary it prints). Without CUDA (or with ``--dry-run``) it prints the
steps it would run and exits 0. Exit status 1 when a step failed its expectation.

    python scripts/gpu_check.py [--dry-run] [--budget-s 600] [--name NAME]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Step:
    name: str
    cmd: list[str]
    timeout_s: int
    judge: Callable[[Step, str], tuple[bool, dict]]  # (passed, figures) from the step's output
    result: dict = field(default_factory=dict)


def _pytest_counts(output: str) -> dict:
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", output)}
    return counts


def judge_pytest(step: Step, output: str) -> tuple[bool, dict]:
    counts = _pytest_counts(output)
    ok = step.result["rc"] == 0 and counts.get("passed", 0) > 0 and not counts.get("failed") and not counts.get("error")
    return ok, counts


def judge_json_last_line(step: Step, output: str) -> tuple[bool, dict]:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return step.result["rc"] == 0, json.loads(line)
            except ValueError:
                break
    return False, {}


def judge_train(run_dir: Path) -> Callable[[Step, str], tuple[bool, dict]]:
    def judge(step: Step, output: str) -> tuple[bool, dict]:
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return False, {}
        mfu = []
        metrics = run_dir / "metrics.csv"
        if metrics.exists():
            with open(metrics) as f:
                mfu = [float(r["perf/mfu"]) for r in csv.DictReader(f) if r.get("perf/mfu")]
        figures = {
            k: summary.get(k)
            for k in ("status", "steps", "final_val_loss", "tokens_per_s", "wall_time_s", "n_parameters")
        }
        figures["mfu_median"] = statistics.median(mfu[1:] or mfu) if mfu else None
        loss = figures["final_val_loss"]
        ok = (
            summary.get("status") == "completed"
            and loss is not None
            and math.isfinite(loss)
            and loss < 3.0
            and (figures["mfu_median"] or 0) > 0
        )
        return ok, figures

    return judge


def judge_sweep(sweep_dir: Path, report: bool) -> Callable[[Step, str], tuple[bool, dict]]:
    """Every job ended (completed, or diverged at a too-large lr) and none crashed; with ``report``,
    ``famlab compare`` wrote its report."""

    def judge(step: Step, output: str) -> tuple[bool, dict]:
        statuses: dict[str, int] = {}
        for s in sweep_dir.glob("*/summary.json"):
            status = json.loads(s.read_text()).get("status", "?")
            statuses[status] = statuses.get(status, 0) + 1
        ok = step.result["rc"] == 0 and statuses.get("completed", 0) > 0 and not statuses.get("failed")
        ok = ok and (not report or (sweep_dir / "report.md").exists())
        return ok, {"jobs": statuses, "report": str(sweep_dir / "report.md")}

    return judge


def plan(out: Path) -> list[Step]:
    """The steps, their commands and limits (seconds), in the order they run."""
    train_dir = out / "train" / "runs" / "base_gpu"
    sweep_dir = out / "claim_convergence_smoke" / "multiruns" / "gpu_check"
    pytest = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    return [
        Step("gpu_tests", [*pytest, "tests", "--ignore=tests/attention"], 150, judge_pytest),
        Step("flex_vs_blocked", [*pytest, "tests/attention"], 90, judge_pytest),
        Step(
            "train_base",
            [
                PY,
                "train.py",
                "model=base",
                "trainer=gpu",
                "trainer.max_steps=300",
                "trainer.val_check_interval=100",
                "logger=csv",
                "callbacks.progress_bar=null",
                f"out_root={out}",
                "run_name=base_gpu",
            ],
            120,
            judge_train(train_dir),
        ),
        Step(
            "bench_throughput",
            [
                PY,
                "benchmarks/throughput.py",
                "--device",
                "cuda",
                "--model",
                "base",
                "--steps",
                "120",
                "--warmup",
                "20",
                "--repeats",
                "2",
            ],
            90,
            judge_json_last_line,
        ),
        Step(
            "bench_optimizer_step", [PY, "benchmarks/optimizer_step.py", "--device", "cuda"], 60, judge_json_last_line
        ),
        Step(
            "bench_position",
            [PY, "benchmarks/position.py", "--device", "cuda", "--dtype", "bfloat16"],
            45,
            judge_json_last_line,
        ),
        Step(
            "bench_attention",
            [PY, "benchmarks/attention.py", "--device", "cuda", "--contexts", "1024", "4096"],
            60,
            judge_json_last_line,
        ),
        Step(
            "claim_sweep",
            [
                PY,
                "train.py",
                "-m",
                "experiment=claim_convergence_smoke",
                "launcher=joblib",
                "hydra.launcher.n_jobs=6",
                "trainer=gpu",
                "optimizer=adamw,fam,fam_adam",
                "optimizer.lr=3e-3,3e-1",
                "seed=0,1",
                f"out_root={out}",
                "sweep_name=gpu_check",
            ],
            150,
            judge_sweep(sweep_dir, report=False),
        ),
        Step(
            "claim_compare",
            [PY, "-c", "import sys; from famlab.cli import main; sys.exit(main())", "compare", str(sweep_dir)],
            30,
            judge_sweep(sweep_dir, report=True),
        ),
    ]


def run_step(step: Step, env: dict, left_s: float) -> None:
    if left_s < min(30, step.timeout_s):
        step.result = {"rc": None, "passed": False, "skipped": f"budget: {left_s:.0f} s left"}
        return
    limit = min(step.timeout_s, left_s)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        step.cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )  # its own process group: a timeout ends its workers too
    try:
        output, rc = proc.communicate(timeout=limit)[0], proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, rc = proc.communicate()[0], "timeout"
    output = output.decode(errors="replace")
    step.result = {"rc": rc, "wall_s": round(time.monotonic() - t0, 1), "tail": output[-2000:]}
    passed, figures = step.judge(step, output) if rc != "timeout" else (False, {})
    step.result.update(passed=passed, figures=figures)


def summary_lines(steps: list[Step]) -> list[str]:
    lines = [f"{'step':<22}{'result':<8}{'time s':>8}  figures"]
    for s in steps:
        r = s.result
        verdict = "skip" if r.get("skipped") else "ok" if r.get("passed") else "FAIL"
        figs = json.dumps(r.get("figures", r.get("skipped", "")), default=str)
        lines.append(f"{s.name:<22}{verdict:<8}{r.get('wall_s', 0):>8}  {figs[:160]}")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="print the steps and exit (the default without CUDA)")
    ap.add_argument("--budget-s", type=float, default=600, help="total time for all steps (default 10 minutes)")
    ap.add_argument("--name", default=None, help="result file suffix (default: the GPU's name)")
    args = ap.parse_args()
    import torch

    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    out = REPO / "outputs" / "gpu_check" / dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    steps = plan(out)
    if args.dry_run or not torch.cuda.is_available():
        why = "--dry-run" if args.dry_run else "no CUDA device"
        print(f"gpu-check: {why}; on a CUDA machine this would run (limit in seconds, {args.budget_s:.0f} s in all):")
        for s in steps:
            print(f"  [{s.name}] ({s.timeout_s} s) " + " ".join(str(c) for c in s.cmd))
        print(f"and write benchmarks/results/{date}-gpu-<device>.json")
        return 0
    device = torch.cuda.get_device_name()
    name = args.name or re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    t_start = time.monotonic()
    for step in steps:
        run_step(step, env, args.budget_s - (time.monotonic() - t_start))
        print(summary_lines([step])[1], flush=True)
    lines = summary_lines(steps)
    result = {
        "date": date,
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "total_s": round(time.monotonic() - t_start, 1),
        "outputs": str(out),
        "steps": {s.name: {"cmd": " ".join(map(str, s.cmd)), **s.result} for s in steps},
        "summary": lines,
    }
    path = REPO / "benchmarks" / "results" / f"{date}-gpu-{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("\n".join(["", *lines, "", f"total {result['total_s']} s; result: {path.relative_to(REPO)}"]))
    return 0 if all(s.result.get("passed") for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
