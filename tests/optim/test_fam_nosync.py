"""FAMOptimizer.step() and band_summary() never convert a tensor to a Python value (no host sync)."""

import pytest
import torch

from famlab.model.transformer import TransformerLM
from famlab.optim.factories import fam
from famlab.optim.fam_config import SEED_ANALYSIS
from famlab_testing import HostSyncCatcher


def test_the_guard_catches_item():
    with pytest.raises(AssertionError, match="host sync"):
        with HostSyncCatcher():
            torch.ones(2).sum().item()
    with pytest.raises(AssertionError, match="host sync"):
        with HostSyncCatcher():
            bool(torch.ones(()) > 0)


A = {**SEED_ANALYSIS, "fam_start_step": 2}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(analysis=A),
        dict(base="adam", weight_decay=0.1, analysis=A),
        dict(analysis={**A, "spectrum": "temporal", "window": 8}),
        dict(analysis=None),
        dict(weight_decay=0.01, analysis={**A, "attention_layout": "legacy"}),
    ],
)
def test_step_has_no_host_sync(kwargs):
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=32, dims=32, layers=1, heads=2, context=8)
    opt = fam(model, **kwargs)
    x = torch.randint(0, 32, (2, 8))
    for step in range(5):  # steps 1-2 plain, 3 first analysis (H <- b), 4-5 EMA
        opt.zero_grad()
        model(x).square().mean().backward()
        with HostSyncCatcher():
            opt.step()
            summary = opt.band_summary()
    if kwargs["analysis"] is not None:
        assert summary["attention"]["active"] > 0
        assert all(st["fam_count"] == 3 for st in opt.state.values() if "fam_count" in st)
