"""Checks that need a CUDA GPU (marked ``gpu``; skipped without one, run by ``make gpu-check``):
bf16 training through ``trainer=gpu``, fused AdamW and FAM stepping on the device, and
``torch.compile`` of the ``gpt2_small`` preset."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from famlab import api
from famlab.build import build_optimization
from famlab.lit.mfu import peak_flops
from famlab_testing import TINY

pytestmark = pytest.mark.gpu


def _cuda_model(overrides: list[str]):
    torch.manual_seed(0)
    cfg = api.compose([*TINY, *overrides])
    model = api.build_model(cfg, vocab_size=64).cuda()
    factory, _ = build_optimization(cfg, model)
    return model, factory(model)


def _steps(model, opt, steps: int = 5) -> list[torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, 64, (4, 33), device="cuda", generator=g)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        aux = model.aux_loss()
        opt.zero_grad(set_to_none=True)
        (loss if aux is None else loss + aux).backward()
        opt.step()
        model.post_step(loss=loss.detach())
        losses.append(loss.detach())
    return losses


def _state_on_device(opt) -> None:
    tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    assert tensors, "the optimizer kept no state"
    assert all(t.device.type == "cuda" for t in tensors), {t.device for t in tensors}


def test_bf16_training_with_trainer_gpu(tmp_path):
    summary = api.train(
        api.compose(
            [*TINY, "trainer=gpu", "trainer.max_steps=20", "trainer.val_check_interval=10"], run_dir=tmp_path / "gpu"
        )
    )
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert math.isfinite(summary["final_val_loss"])
    with open(tmp_path / "gpu" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    mfu = [float(r["perf/mfu"]) for r in rows if r.get("perf/mfu")]
    if peak_flops(torch.cuda.get_device_name()):  # logged on every GPU the peak table knows
        assert mfu and all(0 < m < 1 for m in mfu), mfu


def test_fused_adamw_steps_on_cuda():
    model, opt = _cuda_model(["optimizer=adamw"])
    assert any(g.get("fused") for g in opt.param_groups), "AdamW on CUDA should use the fused kernel"
    before = [p.detach().clone() for p in model.parameters()]
    losses = _steps(model, opt)
    assert all(torch.isfinite(loss) for loss in losses)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    _state_on_device(opt)


@pytest.mark.parametrize("optimizer", ["fam", "fam_adam", "fam_temporal"])
def test_fam_steps_on_cuda(optimizer):
    model, opt = _cuda_model([f"optimizer={optimizer}"])
    losses = _steps(model, opt, steps=8)
    assert all(torch.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    _state_on_device(opt)


def test_torch_compile_gpt2_small_matches_eager():
    torch.manual_seed(0)
    cfg = api.compose(["model=gpt2_small"])
    model = api.build_model(cfg, vocab_size=50257).cuda()
    x = torch.randint(0, 50257, (2, 256), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager_loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
        loss = F.cross_entropy(compiled(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert abs(loss.item() - eager_loss.item()) < 2e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
