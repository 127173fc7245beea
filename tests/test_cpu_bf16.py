"""trainer=cpu_bf16: bf16 mixed precision on the CPU composes, trains in bf16 and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from famlab import api
from famlab_testing import TINY
from test_train import _train, _weights

STOP = ["+callbacks.stop.step=5", "+callbacks.stop._target_=famlab.lit.interrupt.StopAtStep"]
EIGHT = ["trainer=cpu_bf16", "trainer.max_steps=8", "trainer.val_check_interval=4"]


def test_cpu_bf16_composes_with_the_cpu_trainer():
    cfg = api.compose([*TINY, "trainer=cpu_bf16"])
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    assert cfg.trainer.gradient_clip_val == api.compose(TINY).trainer.gradient_clip_val
    assert api.compose([*TINY, "trainer=cpu_bf16", "trainer.max_steps=9"]).trainer.max_steps == 9


def test_exact_resume_under_cpu_bf16(tmp_path):
    full = _train(tmp_path, "full", *EIGHT)
    part = _train(tmp_path, "part", *EIGHT, *STOP)
    assert part["status"] == "interrupted" and part["steps"] == 5
    resumed = _train(tmp_path, "part", *EIGHT, "resume=auto")
    assert resumed["status"] == "completed" and resumed["steps"] == 8
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=1e-5)
    # it did train in bf16: fp32 weights after the same 8 steps differ (autocast rounds the matmuls)
    _train(tmp_path, "fp32", "trainer.max_steps=8", "trainer.val_check_interval=4")
    fp32 = _weights(tmp_path / "fp32")
    assert all(v.dtype == torch.float32 for v in a.values() if v.is_floating_point())
    assert any(not torch.equal(a[k], fp32[k]) for k in a if a[k].is_floating_point())
