"""One writer per run directory: a second start is refused before it writes anything, a run killed
with SIGKILL is taken over by resume=auto, two launches of one sweep never interleave in a job, and
``famlab compare`` tells a live run from one that died while running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from famlab.report.runs import load_run
from famlab.run_lock import LOCK_NAME, RunLock, RunLocked, lock_state
from famlab_testing import REPO
from test_reliability import KILL_RUN, _env, _launch, _no_orphans, _snapshot, _stop, _val_count, _wait_for  # noqa: F401

LONG = [*KILL_RUN, "trainer.max_steps=40", "trainer.val_check_interval=4"]


def _metrics_steps(run_dir: Path) -> list[int]:
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    step, val = header.index("step"), header.index("val/loss")
    return [int(float(r.split(",")[step])) for r in rows[1:] if r.split(",")[val]]


def _assert_one_clean_run(run_dir: Path, steps: int) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps
    val_steps = _metrics_steps(run_dir)
    assert len(val_steps) == len(set(val_steps)), f"duplicated validation rows: {val_steps}"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == [f"best-step={summary['best_val_step']}.ckpt", "last.ckpt"], names
    assert (run_dir / LOCK_NAME).read_text() == ""  # a clean exit leaves no owner


def test_lock_in_process(tmp_path):
    with RunLock(tmp_path / "r"):
        assert lock_state(tmp_path / "r") == "held" and str(os.getpid()) in (tmp_path / "r" / LOCK_NAME).read_text()
        with pytest.raises(
            RunLocked,
            match=rf"^run directory {tmp_path / 'r'} is in use by another famlab process "
            rf"\(host .+, pid {os.getpid()}, since .+\); wait for it to finish or stop "
            r"it, then rerun with resume=auto \(nothing was written\)$",
        ):
            RunLock(tmp_path / "r").acquire()
    assert lock_state(tmp_path / "r") == "free" and lock_state(tmp_path / "none") == "none"


def test_lock_wait_takes_a_lock_released_within_the_wait(tmp_path, monkeypatch):
    """FAMLAB_LOCK_WAIT_S: a requeued job retries while an NFS lease still holds a dead client's lock."""
    import threading
    import time

    held = RunLock(tmp_path).acquire()
    threading.Timer(1.5, held.release).start()
    monkeypatch.setenv("FAMLAB_LOCK_WAIT_S", "20")
    t0 = time.monotonic()
    waiter = RunLock(tmp_path)
    waiter.refuse_if_held()
    waiter.acquire()
    assert 1.0 < time.monotonic() - t0 < 15 and lock_state(tmp_path) == "held"
    waiter.release()


def test_second_writer_is_refused_and_writes_nothing(tmp_path):
    args = [*LONG, f"out_root={tmp_path}", "run_name=c", "resume=auto"]
    run_dir = tmp_path / "train" / "runs" / "c"
    first = _launch(args, tmp_path / "first.log")
    assert _wait_for(first, lambda: _val_count(run_dir) >= 1), (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(first.pid, signal.SIGSTOP)  # frozen: anything that changes now was written by the second
    try:
        assert load_run(run_dir).status == "running"  # compare: the lock is held
        before = _snapshot(run_dir)
        for extra in (["resume=auto"], []):  # resume=auto, and a fresh start of the same run_name
            out = subprocess.run(
                [sys.executable, "train.py", *args[:-1], *extra],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=300,
                env=_env(),
            )
            assert out.returncode == 2, out.stderr[-3000:]
            line = out.stderr.strip().splitlines()[-1]
            assert line.startswith(f"famlab: error: run directory {run_dir} is in use by another famlab process (host ")
            assert f"pid {first.pid}," in line and "rerun with resume=auto (nothing was written)" in line
            assert _snapshot(run_dir) == before
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
    _assert_one_clean_run(run_dir, 40)


def test_two_concurrent_fresh_starts_one_trains_one_is_refused(tmp_path):
    args = [*LONG, f"out_root={tmp_path}", "run_name=c"]
    procs = [_launch(args, tmp_path / f"{i}.log") for i in range(2)]
    codes = sorted(p.wait(timeout=300) for p in procs)
    logs = [(tmp_path / f"{i}.log").read_text() for i in range(2)]
    assert codes == [0, 2], logs
    assert any("is in use by another famlab process" in log for log in logs)
    _assert_one_clean_run(tmp_path / "train" / "runs" / "c", 40)


def test_lock_of_a_killed_run_is_taken_over_by_resume_auto(tmp_path):
    args = [*LONG, f"out_root={tmp_path}", "run_name=k", "resume=auto"]
    run_dir, log = tmp_path / "train" / "runs" / "k", tmp_path / "k.log"
    proc = _launch(args, log)
    assert _wait_for(proc, lambda: _val_count(run_dir) >= 2), log.read_text()[-3000:]
    _stop(proc)  # SIGKILL: the lock file keeps the dead owner's line, the kernel dropped the lock
    assert f"pid {proc.pid}," in (run_dir / LOCK_NAME).read_text() and lock_state(run_dir) == "free"
    dead = load_run(run_dir)
    assert dead.status == "interrupted" and "died while running" in dead.error
    proc = _launch(args, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert "taking over run directory" in log.read_text()
    _assert_one_clean_run(run_dir, 40)


@pytest.mark.slow
def test_a_sweep_launched_twice_concurrently_never_interleaves_a_job(tmp_path):
    args = [
        "-m",
        *KILL_RUN,
        "trainer.max_steps=24",
        "trainer.val_check_interval=4",
        "seed=0,1",
        f"out_root={tmp_path}",
        "sweep_name=s",
        "resume=auto",
    ]
    sweep = tmp_path / "train" / "multiruns" / "s"
    first = _launch(args, tmp_path / "first.log")
    assert _wait_for(first, lambda: _val_count(sweep / "0") >= 1), (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(first.pid, signal.SIGSTOP)  # the first launch holds job 0 while the second one runs
    try:
        second = _launch(args, tmp_path / "second.log")
        assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert f"job {sweep / '0'} skipped: run directory {sweep / '0'} is in use" in (tmp_path / "second.log").read_text()
    for job in ("0", "1"):
        _assert_one_clean_run(sweep / job, 24)


def test_a_sweep_relaunched_without_resume_leaves_its_finished_jobs_records_alone(tmp_path):
    args = ["-m", *KILL_RUN, "trainer.max_steps=4", "trainer.val_check_interval=2", "seed=0", f"out_root={tmp_path}"]
    args.append("sweep_name=s")
    job = tmp_path / "train" / "multiruns" / "s" / "0"
    first = _launch(args, tmp_path / "first.log")
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-3000:]
    record = (job / "summary.json").read_bytes()
    assert json.loads(record)["status"] == "completed"
    again = _launch(args, tmp_path / "again.log")  # no resume=auto: the job is refused
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert "already has checkpoints; pass resume=auto" in (tmp_path / "again.log").read_text()
    assert (job / "summary.json").read_bytes() == record
