"""Soak run: a parallel multirun killed (SIGKILL to the whole process group) at random moments and
relaunched with ``resume=auto`` until every job completed; each job's final state must equal an
uninterrupted run of the same job config.

    python benchmarks/soak.py [--optimizers adamw,fam_soak,fam_adam,sgd] [--attentions standard,integrated]
                              [--steps 40] [--kills 4] [--seed 0] [--out outputs/soak]

Jobs = optimizers x attentions (8 by default), all in parallel (``launcher=joblib
hydra.launcher.n_jobs=<jobs>``). ``fam_soak`` is ``optimizer=fam`` with the analysis on from step 4
(written to ``<out>/conf``, added with ``--config-dir``). A kill is triggered once the sweep has
written a random number (seeded) of new validations/checkpoints since its launch, after a random
sub-second delay, so kills land during training and checkpoint writes rather than only during
start-up. After each kill the process group must be empty (no orphaned loky workers).

Every kill is followed by a relaunch; ``late_kills`` counts kills that landed after all jobs had
completed (in their shutdown), whose relaunch must change nothing.

Last line: ``{"jobs": 8, "kills": k, "late_kills": l, "relaunches": r, "all_completed": true, "max_weight_diff": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model=tiny",
    "model.dims=32",
    "model.context=32",
    "scheduler=constant",
    "data.batch_size=4",
    "data.val_batches=1",
    "logger=csv",
    "callbacks.progress_bar=null",
    "log_every_n_steps=2",
]
FAM_SOAK = (
    "# optimizer=fam with the spectral analysis on from step 4 (benchmarks/soak.py)\n"
    "defaults:\n  - fam\n  - _self_\nanalysis:\n  fam_start_step: 4\nlr: 0.05\n"
)


def sweep_command(args, sweep_name: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "--config-dir",
        str(args.out / "conf"),
        *TINY,
        "launcher=joblib",
        f"hydra.launcher.n_jobs={args.jobs}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_check_interval={args.val_every}",
        f"optimizer={args.optimizers}",
        f"attention={args.attentions}",
        "resume=auto",
        f"out_root={args.out}",
        f"sweep_name={sweep_name}",
    ]


def summaries(sweep: Path) -> dict[int, dict]:
    out = {}
    for p in sweep.glob("*/summary.json"):
        try:
            out[int(p.parent.name)] = json.loads(p.read_text())
        except (OSError, ValueError):  # being replaced right now
            pass
    return out


def progress(sweep: Path) -> int:
    """Validations recorded by all jobs so far (each is followed by a last.ckpt write)."""
    return sum(len(s.get("val_history") or []) for s in summaries(sweep).values())


def done(sweep: Path, jobs: int) -> bool:
    s = summaries(sweep)
    return len(s) == jobs and all(v.get("status") == "completed" for v in s.values())


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def snapshot(out: Path) -> Path:
    """Freeze the code (src/, conf/, train.py) under ``<out>/code``: every launch and the reference
    run the same code even if the working tree changes meanwhile (resume across code edits is not
    expected to be exact)."""
    code = out / "code"
    shutil.rmtree(code, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", code / "src", ignore=ignore)
    shutil.copytree(REPO / "conf", code / "conf", ignore=ignore)
    shutil.copy2(REPO / "train.py", code / "train.py")
    return code


def launch(cmd: list[str], log: Path, code: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=str(code / "src"),
    )
    env.pop("FAMLAB_CONF", None)
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=code, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep's process group (parent and loky workers) and wait until it is empty."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    wait_group_empty(proc.pid, f"processes of group {proc.pid} survived SIGKILL (orphaned workers)")


def wait_group_empty(pgid: int, why: str, timeout: float = 60.0) -> None:
    """Loky's workers and resource tracker leave a moment after their parent; more than
    ``timeout`` seconds is an orphan."""
    t_end = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > t_end:
            raise RuntimeError(why)
        time.sleep(0.05)


def soak(args) -> dict:
    """Launch, kill, relaunch. Every kill is followed by a relaunch with ``resume=auto`` (a user does
    not know whether the jobs had finished), so a kill that lands after the jobs completed (during
    shutdown) checks that resuming a finished run changes nothing; such kills are counted as late."""
    sweep = args.out / "train" / "multiruns" / "soak"
    rng = random.Random(args.seed)
    kills = late = launches = 0
    total = args.jobs * (args.steps // args.val_every)  # validations of the whole sweep
    t0 = time.monotonic()
    while True:
        if launches > args.kills + args.max_extra_launches:
            raise RuntimeError(f"sweep did not complete after {launches} launches; see {args.out / 'soak.log'}")
        start = progress(sweep)
        proc = launch(sweep_command(args, "soak"), args.out / "soak.log", args.code)
        launches += 1
        if kills < args.kills:
            need = rng.randint(1, max(1, min(2 * args.jobs, total - start - args.jobs)))
            delay = rng.uniform(0.0, 0.5)
            while proc.poll() is None and progress(sweep) < start + need:
                time.sleep(0.005)
            if proc.poll() is None:
                time.sleep(delay)
                kill_group(proc)
                kills += 1
                finished = sum(s.get("status") == "completed" for s in summaries(sweep).values())
                late += finished == args.jobs
                print(
                    f"[{time.monotonic() - t0:6.0f} s] kill {kills}: after {progress(sweep) - start} new "
                    f"validations (+{delay:.2f} s); completed jobs: {finished}/{args.jobs}",
                    flush=True,
                )
                continue
        proc.wait()
        wait_group_empty(proc.pid, "the sweep exited but left processes in its group")
        if done(sweep, args.jobs):
            break
    soak_s = time.monotonic() - t0
    print(f"[{soak_s:6.0f} s] all {args.jobs} jobs completed; reference sweep (uninterrupted) ...", flush=True)
    ref = args.out / "train" / "multiruns" / "reference"
    proc = launch(sweep_command(args, "reference"), args.out / "reference.log", args.code)
    if proc.wait() or not done(ref, args.jobs):
        raise RuntimeError(f"reference sweep failed; see {args.out / 'reference.log'}")
    result = check(args, sweep, ref)
    return {
        "jobs": result.pop("jobs"),
        "kills": kills,
        "late_kills": late,
        "relaunches": launches - 1,
        **result,
        "soak_s": round(soak_s, 1),
    }


def final_state(run_dir: Path) -> dict:
    import torch

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    flat = dict(state["state_dict"])
    for i, opt in enumerate(state["optimizer_states"]):
        for p, s in opt["state"].items():
            flat.update({f"opt{i}.{p}.{k}": v for k, v in s.items() if hasattr(v, "is_floating_point")})
    return flat


def check(args, sweep: Path, ref: Path) -> dict:
    """Every job: completed, all steps, one validation per interval in order, no stray .tmp, one best
    checkpoint (the summary's best step), final weights and optimizer state == reference."""
    rows, max_diff = [], 0.0
    expected_steps = list(range(args.val_every, args.steps + 1, args.val_every))
    for job, s in sorted(summaries(sweep).items()):
        steps = [r["step"] for r in s.get("val_history") or []]
        last = sweep / str(job) / "checkpoints" / "last.ckpt"
        a, b = final_state(sweep / str(job)), final_state(ref / str(job))
        diff = max(
            ((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point() and k in b),
            default=0.0,
        )
        ok = (
            s["status"] == "completed"
            and s.get("steps") == args.steps
            and steps == expected_steps
            and last.exists()
            and a.keys() == b.keys()
            and diff <= args.tolerance
            and not list(last.parent.glob("*.tmp"))
            and [p.name for p in last.parent.glob("best-*.ckpt")] == [f"best-step={s.get('best_val_step')}.ckpt"]
        )
        max_diff = max(max_diff, diff)
        choice = f"{s['choices'].get('optimizer')}/{s['choices'].get('attention')}"
        rows.append((job, choice, s["status"], s.get("steps"), len(steps), diff, ok))
    print(f"\n{'job':>3}  {'optimizer/attention':<26} {'status':<10} {'steps':>5} {'vals':>4} {'max |dw|':>10}  ok")
    for job, choice, status, steps, vals, diff, ok in rows:
        print(f"{job:>3}  {choice:<26} {status:<10} {steps:>5} {vals:>4} {diff:>10.2e}  {'yes' if ok else 'NO'}")
    return {
        "jobs": len(rows),
        "all_completed": all(r[2] == "completed" for r in rows) and len(rows) == args.jobs,
        "all_checks_passed": all(r[-1] for r in rows),
        "max_weight_diff": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--optimizers", default="adamw,fam_soak,fam_adam,sgd")
    ap.add_argument("--attentions", default="standard,integrated")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--val-every", type=int, default=4, help="trainer.val_check_interval (a last.ckpt each time)")
    ap.add_argument("--kills", type=int, default=4)
    ap.add_argument("--max-extra-launches", type=int, default=4)
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "outputs" / "soak")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    args.jobs = len(args.optimizers.split(",")) * len(args.attentions.split(","))
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "conf" / "optimizer").mkdir(parents=True, exist_ok=True)
    (args.out / "conf" / "optimizer" / "fam_soak.yaml").write_text(FAM_SOAK)
    args.code = snapshot(args.out)
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    print(f"code: {REPO} at {sha or 'unknown'} (working tree) frozen in {args.code}")
    print("command:", " ".join(sweep_command(args, "soak")[1:]), flush=True)
    result = soak(args)
    print(json.dumps(result))
    return 0 if result["all_completed"] and result["all_checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
