"""A quiet console: third-party tips and deprecation noise only with verbose=true; famlab's own lines stay."""

from __future__ import annotations

import subprocess
import sys

import pytest

from famlab_testing import REPO, TINY

NOISE = ("💡 Tip", "LeafSpec", "anonymous setting")


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_noise_only_when_verbose(tmp_path, verbose):
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            "logger=default",
            f"verbose={str(verbose).lower()}",
            "++callbacks.progress_bar._target_=famlab.lit.progress.StepProgressBar",
            f"out_root={tmp_path}",
            "run_name=q",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "run directory:" in text and "step 6/6 [" in text  # famlab's own output stays
    found = [n for n in NOISE if n in text]
    assert found == (list(NOISE) if verbose else []), found
