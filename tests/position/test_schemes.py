"""Properties every position scheme must have (norms, relative scores, caching, gradients, LM use)."""

from __future__ import annotations

import functools

import pytest
import torch

from famlab.model.transformer import TransformerLM
from famlab.position.compact import CompactRotations
from famlab.position.none import NoPosition
from famlab.position.rotary import RotaryEmbedding

P = functools.partial
SCHEMES = {
    "none": P(NoPosition),
    "rotary": P(RotaryEmbedding),
    "rotary_partial": P(RotaryEmbedding, rot_dim=8),
    "rotary_legacy": P(RotaryEmbedding, freqs_for="legacy_linear", theta=100.0),
    "quaternion": P(RotaryEmbedding, use_quaternion=True),
    "quaternion_pair": P(RotaryEmbedding, use_quaternion=True, rot_dim=11),
    "projection": P(RotaryEmbedding, use_quaternion=True, use_projection=True),
    "projection_pairs": P(RotaryEmbedding, use_projection=True, proj_dim=4),
    "compact": P(CompactRotations),
    "compact_learned": P(CompactRotations, learned_freq=True),
}
ROTATING = [name for name in SCHEMES if name != "none"]
HD, T = 12, 9


def make(name: str, hd: int = HD) -> torch.nn.Module:
    torch.manual_seed(0)
    return SCHEMES[name](hd).double()


def rand(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_norms_preserved(name):
    t = rand(2, 3, T, HD)
    out = make(name).rotate_qk(t, torch.arange(T) + 3)
    assert out.shape == t.shape
    torch.testing.assert_close(out.norm(dim=-1), t.norm(dim=-1))


@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("shift", [1, 5, 1000])
def test_score_depends_only_on_offset(name, shift):
    scheme, q, k = make(name), rand(2, 2, T, HD), rand(2, 2, T + 1, HD)
    pos = torch.arange(T)

    def scores(s):
        return scheme.rotate_qk(q, pos + s) @ scheme.rotate_qk(k[..., :T, :], pos + s).transpose(-1, -2)

    torch.testing.assert_close(scores(0), scores(shift), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", ROTATING)
def test_encoding_changes_with_position(name):
    scheme = make(name)
    t = rand(1, 1, 1, HD).expand(1, 1, T, HD)  # the same vector at every position
    out = scheme.rotate_qk(t, torch.arange(T))
    gaps = (out[..., 1:, :] - out[..., :1, :]).norm(dim=-1)
    assert (gaps > 1e-3).all()


def test_none_is_identity():
    t = rand(2, 3, T, HD)
    assert torch.equal(make("none").rotate_qk(t, torch.arange(T) + 7), t)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_identity_at_position_zero(name):
    t = rand(2, 3, T, HD)
    torch.testing.assert_close(make(name).rotate_qk(t, torch.zeros(T, dtype=torch.long)), t)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_last_token_alone_matches_full_computation(name):
    scheme, t = make(name), rand(2, 3, T, HD)
    full = scheme.rotate_qk(t, torch.arange(T))
    last = scheme.rotate_qk(t[..., -1:, :], torch.tensor([T - 1]))
    torch.testing.assert_close(last, full[..., -1:, :])


@pytest.mark.parametrize("name", ROTATING)
def test_gradients_reach_every_learnable_parameter(name):
    scheme = make(name)
    q, k = rand(1, 2, T, HD).requires_grad_(), rand(1, 2, T, HD)
    pos = torch.arange(T)
    scores = scheme.rotate_qk(q, pos) @ scheme.rotate_qk(k, pos).transpose(-1, -2)
    (scores.tril() ** 2).sum().backward()
    learnable = {n: p for n, p in scheme.named_parameters() if p.requires_grad}
    assert learnable or name == "compact"
    assert q.grad is not None and q.grad.abs().sum() > 0
    for n, p in learnable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", list(SCHEMES))
def test_state_dict_round_trip_and_metrics(name):
    scheme = make(name)
    with torch.no_grad():
        for p in scheme.parameters():
            p.add_(0.01)
    clone = make(name)
    clone.load_state_dict(scheme.state_dict())
    t = rand(1, 2, T, HD)
    torch.testing.assert_close(clone.rotate_qk(t, torch.arange(T)), scheme.rotate_qk(t, torch.arange(T)))
    metrics = scheme.metrics() if hasattr(scheme, "metrics") else {}
    assert (name == "none") == (not metrics)
    for key, value in metrics.items():
        assert key.startswith("position/") and isinstance(value, torch.Tensor)
        assert value.ndim == 0 and not value.requires_grad and torch.isfinite(value)


@pytest.mark.parametrize("name", list(SCHEMES))
def test_transformer_forward_backward_and_cached_decoding(name):
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=50, dims=48, layers=2, heads=4, context=32, position=SCHEMES[name])
    idx = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    logits = model(idx)
    assert logits.shape == (2, 10, 50)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx.roll(-1, 1).flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    model.eval()
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        steps = [model(idx[:, :4], cache=cache)] + [model(idx[:, i : i + 1], cache=cache) for i in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["rotary", "quaternion", "projection", "compact"])
def test_bf16_inputs_keep_dtype_and_stay_close(name):
    scheme = SCHEMES[name](HD)
    t = rand(1, 2, T, HD).float()
    pos = torch.arange(T) + 500
    out = scheme.rotate_qk(t.bfloat16(), pos)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), scheme.rotate_qk(t, pos), atol=5e-2, rtol=2e-2)
