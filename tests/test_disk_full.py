"""A full disk: the partial file is removed, the last good checkpoint stays, the run ends with one
line and exit status 1, summary.json says failed with that line, and resume=auto continues once
space is free. Writes are made to fail by a fault hook (``famlab.lit.durable.open_tmp``) and, where
this machine lets a test mount one, by a real small filesystem."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from famlab.lit import durable
from famlab.lit.csv_logger import _KeepingWriter
from famlab_testing import REPO
from test_reliability import KILL_RUN, _assert_same_weights, _env, _reference, _weights

RUN = [*KILL_RUN, "trainer.max_steps=12", "trainer.val_check_interval=2"]

# Runs train.py with checkpoint writes failing (ENOSPC after 1000 bytes) from the N-th checkpoint on;
# from then on every durable write fails too (the disk is full) until the run's reserve file is removed.
FAULTY_TRAIN = textwrap.dedent("""
    import errno, io, os, runpy, sys
    from famlab.lit import durable
    FAIL_AT, state = int(os.environ["FAIL_AT_CHECKPOINT"]), {"n": 0, "full": False}
    real_open, real_release = durable.open_tmp, durable.Reserve.release

    class Full(io.FileIO):
        def __init__(self, path, left):
            super().__init__(path, "wb")
            self.left = left
        def write(self, b):
            b = bytes(b)
            if len(b) > self.left:
                super().write(b[:self.left])
                self.left = 0
                state["full"] = True
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(b)
            return super().write(b)

    def open_tmp(path):
        if path.endswith(".ckpt.tmp"):
            state["n"] += 1
            if state["n"] >= FAIL_AT:
                return Full(path, 1000)
        return Full(path, 0) if state["full"] else real_open(path)

    def release(self):
        had = self.created
        real_release(self)
        if had:
            state["full"] = False  # the reserve's megabyte is free again

    durable.open_tmp, durable.Reserve.release = open_tmp, release
    sys.argv = ["train.py", *sys.argv[1:]]
    runpy.run_path("train.py", run_name="__main__")
""")


def _faulty(tmp_path: Path, args: list[str], fail_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "faulty_train.py"
    script.write_text(FAULTY_TRAIN)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(FAIL_AT_CHECKPOINT=str(fail_at)),
    )


def test_full_disk_during_a_checkpoint_then_resume_after_freeing_space(tmp_path):
    args = [*RUN, f"out_root={tmp_path}", "run_name=d", "resume=auto"]
    run_dir = tmp_path / "train" / "runs" / "d"
    # checkpoints 1-2 (best and last at step 2) succeed; the 3rd (best-step=4) fails half-written
    out = _faulty(tmp_path, args, fail_at=3)
    assert out.returncode == 1, out.stderr[-3000:]
    message = (
        f"no space left on device while writing {run_dir}/checkpoints/best-step=4.ckpt; the last good "
        f"checkpoint is step 2; free space and rerun with resume=auto"
    )
    assert out.stderr.strip().splitlines()[-1] == f"famlab: error: {message}"
    assert "Traceback" not in out.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == message
    debris = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name == ".famlab.reserve"]
    assert not debris, debris
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-step=2.ckpt", "last.ckpt"]
    # space freed: resume=auto continues from step 2 and ends where an uninterrupted run ends
    done = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=_env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12 and summary["error"] is None
    assert [r["step"] for r in summary["val_history"]] == list(range(2, 13, 2))
    _assert_same_weights(_reference(tmp_path, RUN), _weights(run_dir))


def test_full_disk_before_any_checkpoint(tmp_path):
    args = [*RUN, f"out_root={tmp_path}", "run_name=e"]
    run_dir = tmp_path / "train" / "runs" / "e"
    out = _faulty(tmp_path, args, fail_at=1)
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"famlab: error: no space left on device while writing {run_dir}/checkpoints/best-step=2.ckpt; no checkpoint "
        f"was written yet; free space and rerun with resume=auto"
    )
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]


def test_atomic_write_removes_the_partial_file_and_names_the_target(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def write(f):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(durable.DiskFull) as err:
        durable.atomic_write(target, write)
    assert err.value.filename == str(target) and err.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    with pytest.raises(ValueError):  # other failures stay what they are, and leave no debris either
        durable.atomic_write(target, lambda f: (_ for _ in ()).throw(ValueError("bad")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    synced = []
    monkeypatch.setattr(durable.os, "fsync", lambda fd: synced.append(fd))
    durable.atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_text() == "new" and len(synced) == 2  # the file before its rename, then the folder


def test_metrics_append_that_fails_leaves_no_partial_row(tmp_path, monkeypatch):
    writer = _KeepingWriter(str(tmp_path))
    writer.log_metrics({"train/loss": 1.0}, step=1)
    writer.save()
    before = (tmp_path / "metrics.csv").read_bytes()
    writer.log_metrics({"train/loss": 2.0}, step=2)
    real_fsync = durable.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("famlab.lit.csv_logger.os.fsync", full)
    with pytest.raises(durable.DiskFull, match="metrics.csv"):
        writer.save()
    monkeypatch.setattr("famlab.lit.csv_logger.os.fsync", real_fsync)
    assert (tmp_path / "metrics.csv").read_bytes() == before
    writer.save()
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == ["1,1.0", "2,2.0"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.mark.skipif(sys.platform != "linux", reason="mounts a tmpfs")
def test_full_disk_on_a_real_small_filesystem(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip("cannot mount a small filesystem here (needs root); the fault-hook tests cover the logic")
    try:
        args = [*RUN, "model.dims=64", f"out_root={mnt}", "run_name=f", "resume=auto"]
        run_dir = mnt / "train" / "runs" / "f"
        out = subprocess.run(
            [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=_env()
        )
        assert out.returncode == 1, out.stderr[-3000:]
        line = out.stderr.strip().splitlines()[-1]
        assert line.startswith(f"famlab: error: no space left on device while writing {run_dir}/checkpoints/")
        assert line.endswith("; free space and rerun with resume=auto") and "Traceback" not in out.stderr
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "failed" and line.endswith(summary["error"])
        assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name == ".famlab.reserve"]
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)  # space freed
        done = subprocess.run(
            [sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=_env()
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
