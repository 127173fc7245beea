"""SIGTERM to rank 0 of a two-process ``ddp_spawn`` run (gloo): every rank saves and stops together.

A rank that stopped alone would leave the other waiting in the checkpoint barrier or the next
step's collectives; the subprocess' timeout turns such a hang into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from famlab_testing import TINY

REPO = Path(__file__).resolve().parents[2]


class SigtermToRankZero(pl.Callback):
    """Rank 0 sends itself SIGTERM at the end of optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = int(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_to_rank_zero_saves_last_checkpoint_and_stops_every_rank(tmp_path):
    run_dir = tmp_path / "train" / "runs" / "t"
    args = [
        *TINY,
        "trainer=ddp_cpu",
        "trainer.max_steps=40",
        "trainer.val_check_interval=20",
        "data.batch_size=4",
        f"out_root={tmp_path}",
        "run_name=t",
        "+callbacks.sigterm._target_=test_sigterm_ddp.SigtermToRankZero",
        "+callbacks.sigterm.step=3",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "src"), str(Path(__file__).parent), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the ranks hung after SIGTERM: " + proc.communicate()[0].decode()[-3000:])
    log = out.decode()
    assert proc.returncode == 0, log[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", summary
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] in (3, 4)  # the step the signal arrived in, or the next one
    assert f"SIGTERM received at step {state['global_step']}" in summary["error"]
