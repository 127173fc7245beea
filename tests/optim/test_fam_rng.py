"""FAM's sampling-generator state: keyed by device type (any rank restores it), and a resume that ignored it
would change the next samples (a weight above the 10,000-element sampling threshold)."""

import io

import pytest
import torch
from torch import nn

from famlab.optim import fam as fam_module
from famlab.optim.fam import FAMOptimizer, rng_key
from famlab.optim.sampling import SAMPLE_ABOVE


def test_the_key_is_the_device_type_whatever_the_index():
    assert rng_key(torch.device("cuda", 0)) == rng_key(torch.device("cuda", 1)) == rng_key("cuda") == "cuda"
    assert rng_key(torch.device("cpu")) == "cpu"


def test_indexed_keys_of_older_checkpoints_become_types():
    state = torch.zeros(16, dtype=torch.uint8)
    assert set(fam_module._by_type({"cuda:0": state, "cpu": state})) == {"cuda", "cpu"}
    assert set(fam_module._by_type({"cuda:1": state})) == {"cuda"}  # a rank-1 checkpoint restores on rank 0
    assert set(fam_module._by_type({"cuda": state, "cuda:1": state})) == {"cuda", "cuda:1"}


def _params():
    gen = torch.Generator().manual_seed(0)
    big = nn.Parameter(torch.randn(200, 64, generator=gen))  # 12800 > SAMPLE_ABOVE: 64 rows x 64 cols sampled
    flat = nn.Parameter(torch.randn(12000, generator=gen))  # 1-D above the threshold: 1000 entries sampled
    assert big.numel() > SAMPLE_ABOVE and flat.numel() > SAMPLE_ABOVE
    return [big, flat]


def _steps(opt, params, start, n):
    for t in range(start, start + n):
        gen = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def _make(params):
    return FAMOptimizer(params, lr=0.01, fam_start_step=0, min_size=100)


def _resumed(device_index_of_loader: int):
    """Train 4 steps, save (through bytes, as a checkpoint), load into a fresh optimizer, both go on 4 steps."""
    params = _params()
    opt = _make(params)
    _steps(opt, params, 0, 4)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True, map_location="cpu")
    assert all(":" not in key for key in saved["fam_rng"])  # no device index in the checkpoint
    if device_index_of_loader:  # an older checkpoint written under an indexed key is read the same way
        saved["fam_rng"] = {f"{k}:{device_index_of_loader}": v for k, v in saved["fam_rng"].items()}
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = _make(twins)
    opt2.load_state_dict(saved)
    _steps(opt, params, 4, 4)
    _steps(opt2, twins, 4, 4)
    return (params, opt), (twins, opt2)


@pytest.mark.parametrize("index", [0, 1])
def test_round_trip_continues_identically_with_sampled_weights(index):
    (params, opt), (twins, opt2) = _resumed(index)
    for p, q in zip(params, twins):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["band_ema"], opt2.state[q]["band_ema"])


def test_ignoring_the_saved_generator_state_would_be_caught(monkeypatch):
    """The planted bug (load drops fam_rng, so the loader re-seeds) must change the continued run."""
    original = FAMOptimizer.load_state_dict

    def forgetful(self, state_dict):
        original(self, {k: v for k, v in state_dict.items() if k != "fam_rng"})

    monkeypatch.setattr(FAMOptimizer, "load_state_dict", forgetful)
    (params, opt), (twins, opt2) = _resumed(0)
    assert not all(torch.equal(opt.state[p]["band_ema"], opt2.state[q]["band_ema"]) for p, q in zip(params, twins))


def test_settings_travel_in_the_state_dict_and_deepcopy():
    import copy

    params = _params()
    opt = FAMOptimizer(
        params, lr=0.01, fam_start_step=0, min_size=100, base="adam", beta2=0.9, seed=7, spectrum="temporal", window=16
    )
    _steps(opt, params, 0, 2)
    saved = opt.state_dict()
    assert {k: saved["param_groups"][0][k] for k in ("base", "beta2", "seed", "spectrum", "window")} == dict(
        base="adam", beta2=0.9, seed=7, spectrum="temporal", window=16
    )
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    restored = FAMOptimizer(twins, lr=0.01, fam_start_step=0, min_size=100)  # built with other settings
    restored.load_state_dict(saved)
    assert (restored.base, restored.spectrum, restored.window, restored.seed) == ("adam", "temporal", 16, 7)
    clone = copy.deepcopy(opt)
    assert (clone.base, clone.beta2, clone.window) == ("adam", 0.9, 16) and clone._steps == 2
    with pytest.raises(ValueError, match="optimizer.base='sgd' is a setting of the whole optimizer"):
        FAMOptimizer([{"params": params[:1]}, {"params": params[1:], "base": "sgd"}], base="adam")
