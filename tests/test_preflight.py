"""An out_root that cannot be created and a non-integer seed: one line, exit status 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from famlab import api
from famlab.errors import ConfigError
from famlab_testing import REPO, TINY


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _one_line(out, needle: str) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("famlab: error: ") and needle in lines[0], out.stderr


def test_out_root_below_a_regular_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    for mode in ([], ["-m"]):
        out = _cli(*mode, *TINY, f"out_root={tmp_path}/afile/runs", cwd=tmp_path)
        _one_line(out, f"out_root: cannot create {tmp_path}/afile/runs/train/")
        assert "is a file, not a directory" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_root_in_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere but on read-only system trees such as /proc/sys
        ro = Path("/proc/sys")
        if os.access(ro, os.W_OK):
            pytest.skip("no read-only directory available to this user")
    before = sorted(ro.iterdir())
    try:
        out = _cli(*TINY, f"out_root={ro}/famlab-runs", cwd=tmp_path)
    finally:
        (tmp_path / "ro").chmod(0o755)
    _one_line(out, f"{ro} is not writable by this user")
    assert sorted(ro.iterdir()) == before


def test_seed_must_be_an_integer(tmp_path):
    out = _cli(*TINY, "seed=abc", f"out_root={tmp_path}/o", cwd=tmp_path)
    _one_line(out, "seed must be an integer (e.g. seed=0), got 'abc'")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="seed must be an integer"):
        api.train(api.compose([*TINY, "seed=1.5", f"out_root={tmp_path}"], run_dir=tmp_path / "api"))
    assert not (tmp_path / "api").exists()
