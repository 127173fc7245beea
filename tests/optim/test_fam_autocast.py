"""FAMOptimizer.step() inside a user's torch.autocast region: no crash, and the same update as outside it."""

import pytest
import torch
from torch import nn

from famlab.optim.fam import FAMOptimizer


@pytest.mark.parametrize(
    "kwargs", [dict(), dict(spectrum="temporal", window=8), dict(base="adam")], ids=["spatial", "temporal", "adam"]
)
def test_step_inside_cpu_bf16_autocast_matches_the_step_outside(kwargs):
    def run(autocast: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32))
        opt = FAMOptimizer(model.parameters(), fam_start_step=1, min_size=100, lr=0.01, **kwargs)
        x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
        for _ in range(4):  # steps 2-4 run the analysis
            opt.zero_grad()
            model(x).float().square().mean().backward()  # gradients outside autocast: the same in both runs
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                opt.step()
        return model, opt

    (m1, o1), (m2, o2) = run(False), run(True)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
        st = o2.state[q]
        assert all(v.dtype == torch.float32 for v in st.values() if isinstance(v, torch.Tensor))
    assert any(st.get("fam_count", 0) == 3 for st in o2.state.values())


def test_training_step_entirely_inside_autocast_runs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 32))
    opt = FAMOptimizer(model.parameters(), fam_start_step=1, min_size=100, lr=0.01)
    x = torch.randn(8, 32)
    for _ in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            opt.zero_grad()
            model(x).float().square().mean().backward()
            opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
