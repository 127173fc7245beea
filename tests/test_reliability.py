"""Reliability under faults: SIGKILL/SIGTERM and resume, failing sweep jobs, unsafe checkpoints, secrets.

Training runs here are real ``python train.py`` processes started in their own session, so a
kill reaches the whole process group; every test waits for (or kills) what it started.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY

from famlab import api
from famlab.errors import ConfigError

# ~2 s of training after a ~10 s start-up; a checkpoint (last.ckpt) every 2 steps
KILL_RUN = [*TINY, "model.dims=32", "model.context=32", "trainer.max_steps=30", "trainer.val_check_interval=2",
            "data.val_batches=1"]
STATEFUL = {
    "fam": ["optimizer=fam", "optimizer.fam_start_step=2", "optimizer.lr=0.05"],
    "integrated": ["attention=integrated", "attention.win_size=8", "attention.max_span=16",
                   "attention.refiner.update_every=2", "attention.refiner.epsilon=0.5"],
}


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(extra)
    return env


def _launch(args: list[str], log: Path, **env) -> subprocess.Popen:
    """``python train.py <args>`` in a new session (its own process group)."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=_env(**env))


def _stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=120)


def _val_count(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "summary.json").read_text()).get("val_history") or [])
    except (OSError, ValueError):
        return 0


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """Poll every 2 ms until ``ready()``; False when the process ended first."""
    t_end = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            return True
        if time.monotonic() > t_end:
            _stop(proc)
            raise TimeoutError("training process made no progress")
        time.sleep(0.002)
    return False


def _weights(run_dir: Path) -> dict:
    """Model weights and buffers plus every optimizer state tensor (FAM's momentum, band history, RNG)."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    flat = dict(state["state_dict"])
    for i, opt in enumerate(state["optimizer_states"]):
        for p, s in opt["state"].items():
            flat.update({f"optimizer{i}.{p}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
        if torch.is_tensor(opt.get("fam_rng")):
            flat[f"optimizer{i}.fam_rng"] = opt["fam_rng"]
    return flat


def _assert_same_weights(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _reference(tmp_path: Path, overrides: list[str]) -> dict:
    """The uninterrupted run, in-process."""
    cfg = api.compose([*overrides, "run_name=ref", f"out_root={tmp_path}"], run_dir=tmp_path / "ref")
    assert api.train(cfg)["status"] == "completed"
    return _weights(tmp_path / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(STATEFUL))
def test_sigkill_at_random_moments_then_resume_auto_matches_uninterrupted(tmp_path, variant):
    overrides = [*KILL_RUN, *STATEFUL[variant]]
    args = [*overrides, f"out_root={tmp_path}", "run_name=k", "resume=auto"]
    run_dir, ckpt_dir = tmp_path / "train" / "runs" / "k", tmp_path / "train" / "runs" / "k" / "checkpoints"
    rng = random.Random(f"kill-{variant}")
    log, kills, strays = tmp_path / "k.log", 0, 0
    # first kill: the moment a checkpoint write starts (last.ckpt.tmp exists); then random moments
    triggers = [lambda: any(ckpt_dir.glob("*.tmp"))]
    for _ in range(2):
        n, delay = rng.randint(2, 9), rng.uniform(0.0, 0.3)
        triggers.append(lambda n=n, delay=delay: _val_count(run_dir) >= n and (time.sleep(delay) or True))
    for ready in triggers:
        proc = _launch(args, log)
        if _wait_for(proc, ready):
            _stop(proc)
            kills += 1
            strays += len(list(ckpt_dir.glob("*.tmp")))
        else:
            break
    print(f"{variant}: {kills} kills, {strays} stray .tmp files left by them")
    if any(ckpt_dir.glob("*.tmp")) or not strays:  # always exercise the "killed mid-save" file
        (ckpt_dir / "last.ckpt.tmp").parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "last.ckpt.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    proc = _launch(args, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert kills >= 2, "the run finished before it could be killed; give it more steps"
    assert summary["status"] == "completed" and summary["steps"] == 30
    steps = [r["step"] for r in summary["val_history"]]
    assert steps == list(range(2, 31, 2))  # one entry per validation, none lost or repeated
    assert not list(ckpt_dir.glob("*.tmp")), "a stray half-written checkpoint was left behind"
    weights = _weights(run_dir)
    if variant == "integrated":  # the Q-learning refiner really acted
        assert any(k.endswith("refiner.q_table") and v.abs().sum() > 0 for k, v in weights.items())
    else:
        assert any(k.endswith(".band_ema") and v.abs().sum() > 0 for k, v in weights.items())  # FAM analysed
    _assert_same_weights(_reference(tmp_path, overrides), weights)


@pytest.mark.slow
def test_sigterm_writes_last_checkpoint_at_current_step_and_resume_completes(tmp_path):
    overrides = [*KILL_RUN, *STATEFUL["fam"], "trainer.val_check_interval=10"]
    args = [*overrides, f"out_root={tmp_path}", "run_name=t", "resume=auto"]
    run_dir, log = tmp_path / "train" / "runs" / "t", tmp_path / "t.log"
    proc = _launch(args, log)
    assert _wait_for(proc, lambda: _val_count(run_dir) >= 1), log.read_text()[-3000:]
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert 10 <= state["global_step"] < 30 and state["global_step"] == summary["steps"]
    assert f"at step {state['global_step']}" in summary["error"]
    proc = _launch(args, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 30 and summary["error"] is None
    _assert_same_weights(_reference(tmp_path, overrides), _weights(run_dir))
