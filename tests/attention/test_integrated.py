"""IntegratedAttention: full-attention limit, summary global branch (dense reference, causality),
caching, gradients, refiner, no host sync."""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from famlab.attention.cache import KVCache
from famlab.attention.core import merge_heads, split_heads
from famlab.attention.integrated import IntegratedAttention
from famlab.attention.refiner import Refiner
from famlab_testing import HostSyncCatcher, group_option

D, HEADS, T = 32, 4, 20
REFINER = {"enabled": True, "states": 100, "actions": 10, "update_every": 2, "epsilon": 0.5, "seed": 1}


def make(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"win_size": 6, "max_span": 5, "ramp": 2, "max_dist": 64, "summary_block": 4, **kw}
    mod = IntegratedAttention(D, HEADS, **kw).double()
    with torch.no_grad():  # a span predictor with a spread of outputs, so the ramp matters
        mod.span_pred.weight.mul_(3.0)
    return mod


def inputs(T=T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, T, D, generator=g, dtype=torch.float64), torch.arange(T)


@pytest.mark.parametrize("gate", [-3.0, 0.0, 2.0])
@pytest.mark.parametrize("bias", [False, True])
def test_full_window_and_span_without_refiner_equals_standard_attention(gate, bias):
    """Both branches are the same causal attention: any gate gives StandardAttention's output."""
    from famlab.attention.standard import StandardAttention
    from famlab.position.rotary import RotaryEmbedding

    mod = make(
        win_size=T,
        max_span=10_000,
        temp_scale=0.0,
        refiner=None,
        global_branch="full",
        position=RotaryEmbedding(D // HEADS),
        bias=bias,
    )
    std = StandardAttention(D, HEADS, position=RotaryEmbedding(D // HEADS), bias=bias).double()
    with torch.no_grad():
        mod.gate.fill_(gate)
    std.qkv.load_state_dict(mod.qkv.state_dict())
    std.proj.load_state_dict(mod.proj.state_dict())
    x, pos = inputs()
    torch.testing.assert_close(mod(x, pos), std(x, pos))
    cache = KVCache()  # cached decoding reaches the same limit
    outs = [mod(x[:, :5], pos[:5], cache)] + [mod(x[:, i : i + 1], pos[i : i + 1], cache) for i in range(5, T)]
    torch.testing.assert_close(torch.cat(outs, 1), std(x, pos))


def test_gate_mixes_the_branches_and_the_prefix_uses_the_local_output():
    mod = make(refiner=None)  # summary_block 4: queries 0..2 have no complete block
    x, pos = inputs()
    q, k, k_raw, v = mod._project(x, pos)
    glob = mod._global(q, k, k_raw, v, pos, None)
    pred, s = mod._span(merge_heads(glob), None)
    local, _ = mod._local(q, k, v, (mod.max_span * s)[:, None], (1 + mod.temp_scale * (1 - s))[:, None], None)
    g = torch.sigmoid(mod.gate)[:, None, None]
    mixed = g * local + (1 - g) * glob
    mixed[:, :, :3] = local[:, :, :3]
    torch.testing.assert_close(mod(x, pos), mod.proj(merge_heads(mixed)))
    with torch.no_grad():
        mod.gate.fill_(30.0)  # g ~ 1: local branch alone
    torch.testing.assert_close(mod(x, pos), mod.proj(merge_heads(local)))


@pytest.mark.parametrize("kw", [{}, {"refiner": REFINER, "focus_iters": 2}, {"global_branch": "full"}])
def test_no_causal_leakage_full_and_cached(kw):
    mod = make(**kw)
    x, pos = inputs()
    y = mod(x, pos)
    for t in (1, 8, 19):
        x2 = x.clone()
        x2[:, t:] = torch.randn_like(x2[:, t:])
        torch.testing.assert_close(mod(x2, pos)[:, :t], y[:, :t])
    cache = KVCache()  # decoding the perturbed sequence reproduces the clean prefix
    outs = [mod(x2[:, :3], pos[:3], cache)] + [mod(x2[:, i : i + 1], pos[i : i + 1], cache) for i in range(3, t)]
    torch.testing.assert_close(torch.cat(outs, 1), y[:, :t])


@pytest.mark.parametrize(
    "prefill,focus,branch", [(1, 1, "summary"), (7, 2, "summary"), (9, 1, "full"), (3, 1, "summary")]
)
def test_cached_decoding_equals_full_forward(prefill, focus, branch):
    mod = make(focus_iters=focus, refiner=REFINER, global_branch=branch)
    x, pos = inputs()
    full = mod(x, pos)
    cache = KVCache()
    outs = [mod(x[:, :prefill], pos[:prefill], cache)]
    outs += [mod(x[:, i : i + 1], pos[i : i + 1], cache) for i in range(prefill, T)]
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert cache.extra["local"].k.shape[-2] == mod.window - 1  # local cache stays bounded


def test_summary_decoding_in_chunks_across_block_ends_keeps_only_summaries():
    mod = make(refiner=REFINER)  # summary_block 4
    x, pos = inputs()
    full = mod(x, pos)
    cache, outs, start = KVCache(), [], 0
    for size in (2, 5, 1, 7, 5):  # chunk ends 2, 7, 8, 15, 20: inside blocks, on and across block ends
        outs.append(mod(x[:, start : start + size], pos[start : start + size], cache))
        start += size
    torch.testing.assert_close(torch.cat(outs, 1), full)
    assert len(cache) == T and cache.k.numel() == 0  # token count only, no per-token global keys
    assert cache.extra["summary_k"].shape[-2] == T // 4 and cache.extra["pending_k"].shape[-2] == T % 4


@pytest.mark.parametrize("query_block", [1, 3, 5])
def test_local_query_blocks_smaller_than_the_window_give_the_same_output(monkeypatch, query_block):
    from famlab.attention import integrated

    mod = make(win_size=8, refiner=REFINER)
    x, pos = inputs()
    ref = mod(x, pos)  # query block = window
    monkeypatch.setattr(integrated, "_LOCAL_QUERY_BLOCK", query_block)
    torch.testing.assert_close(mod(x, pos), ref)


@pytest.mark.parametrize("branch", ["summary", "full"])
def test_every_parameter_gets_a_gradient(branch):
    mod = make(refiner=REFINER, global_branch=branch)
    x, pos = inputs()
    mod(x, pos).pow(2).sum().backward()
    missing = [n for n, p in mod.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []  # span_pred, gate, shared qkv, proj: DDP-safe


def summary_reference(mod, x, pos, block):
    """Global branch from explicit per-token keys/values, block means, the block-end rotation and
    a [T, n_blocks] mask, one query at a time (zero where no block is complete)."""
    q, k, v = (split_heads(t, HEADS) for t in mod.qkv(x).chunk(3, dim=-1))
    q = mod.position.rotate_qk(q, pos)
    n = x.shape[1] // block
    k_sum = torch.stack([k[:, :, b * block : (b + 1) * block].mean(2) for b in range(n)], 2) if n else k[:, :, :0]
    v_sum = torch.stack([v[:, :, b * block : (b + 1) * block].mean(2) for b in range(n)], 2) if n else v[:, :, :0]
    k_sum = mod.position.rotate_qk(k_sum, pos[torch.arange(n) * block + block - 1])
    mask = torch.tensor([[(b + 1) * block <= i + 1 for b in range(n)] for i in range(x.shape[1])], dtype=torch.bool)
    out = torch.zeros_like(q)
    for i in range(x.shape[1]):
        if mask[i].any():
            w = (q[:, :, i : i + 1] @ k_sum[:, :, mask[i]].transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
            out[:, :, i : i + 1] = w @ v_sum[:, :, mask[i]]
    return merge_heads(out)


@pytest.mark.parametrize("block,rotary,bias", [(4, False, False), (5, True, True), (32, False, False)])
def test_summary_global_branch_equals_dense_block_mean_reference(block, rotary, bias):
    from famlab.position.rotary import RotaryEmbedding

    position = RotaryEmbedding(D // HEADS) if rotary else None
    mod = make(summary_block=block, position=position, bias=bias).double()
    x, pos = inputs()
    pos = pos + 3  # positions need not start at 0; blocks follow the token index
    ref = summary_reference(mod, x, pos, block)
    q, k, k_raw, v = mod._project(x, pos)
    torch.testing.assert_close(merge_heads(mod._global(q, k, k_raw, v, pos, None)), ref)
    assert (ref[:, : block - 1] == 0).all()  # no complete block yet: zero global output


def test_summary_mode_changing_one_token_changes_nothing_before_it():
    mod = make()  # summary_block 4, window 6
    x, pos = inputs()
    y = mod(x, pos)
    for j in (0, 5, 9, 11, 19):  # inside blocks, block ends, last token
        x2 = x.clone()
        x2[:, j] += torch.randn_like(x2[:, j])
        y2 = mod(x2, pos)
        torch.testing.assert_close(y2[:, :j], y[:, :j])
        assert not torch.allclose(y2[:, j], y[:, j])


@pytest.mark.parametrize("branch,block,reaches", [("summary", 4, True), ("full", 4, True), ("summary", 64, False)])
def test_global_branch_carries_tokens_beyond_the_local_window(branch, block, reaches):
    mod = make(global_branch=branch, summary_block=block, refiner=None)
    with torch.no_grad():  # a constant span, so the span predictor cannot carry token 1 either
        mod.span_pred.weight.zero_()
    x, pos = inputs()
    x2 = x.clone()
    x2[:, 1] = torch.randn_like(x2[:, 1])  # token 1 lies in block 0 = [0, 4), complete from query 3 on
    y, y2 = mod(x, pos), mod(x2, pos)
    # query 15 sees local keys [10, 15]; token 1 reaches it only through the global branch
    assert (not torch.allclose(y[:, 15], y2[:, 15])) == reaches


def test_refiner_factor_scales_the_span():
    mod = make(refiner=REFINER)
    x, pos = inputs()
    y1 = mod(x, pos)
    span1 = mod.span_mean.clone()
    mod.refiner.factor.fill_(0.25)
    y2 = mod(x, pos)
    torch.testing.assert_close(mod.span_mean, span1 * 0.25)
    assert not torch.allclose(y1, y2)


def test_post_step_drives_refiner_and_metrics():
    mod = make(refiner=REFINER)
    x, pos = inputs()
    for i in range(6):
        mod(x, pos)
        mod.post_step(loss=torch.tensor(3.0 - 0.1 * i))
    assert int(mod.refiner.step) == 6 and float(mod.refiner.action_counts.sum()) == 3
    m = mod.metrics()
    assert {"span/mean", "span/pred", "refiner/span", "refiner/epsilon", "refiner/action_hist_0"} <= set(m)
    assert all(not v.requires_grad for v in m.values())
    sd = mod.state_dict()
    assert "refiner.q_table" in sd and sd["refiner.q_table"].shape == (100, 10)


def test_local_global_has_no_refiner_and_post_step_is_harmless():
    mod = make(refiner={"enabled": False, "states": 5})
    assert mod.refiner is None
    mod.post_step(loss=torch.tensor(1.0))
    assert "refiner/span" not in mod.metrics()


@pytest.mark.parametrize("branch", ["summary", "full"])
def test_recorded_stats_for_both_branches(branch):
    mod = make(global_branch=branch)
    mod.record_stats = True
    x, pos = inputs()
    mod(x, pos)
    m = mod.metrics()
    for key in ("attn/entropy", "attn/max_logit", "attn/local_entropy", "attn/local_max_logit"):
        assert torch.isfinite(m[key])
    assert m["attn/local_entropy"] <= torch.log(torch.tensor(float(mod.window)))


@pytest.mark.parametrize("record_stats", [False, True])
def test_training_forward_backward_and_post_step_have_no_host_sync(record_stats):
    mod = make(refiner=REFINER).train()
    mod.record_stats = record_stats
    x, pos = inputs()
    with HostSyncCatcher():
        for i in range(2):
            mod(x, pos).sum().backward()
            mod.post_step(loss=torch.tensor(2.0 - i))
        mod.metrics()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_forward_matches_blocked():
    mod = make().float().eval()
    x, pos = inputs()
    x = x.float()
    with torch.no_grad():
        ref = mod(x, pos)
        mod.backend = "flex"
        out = mod(x, pos)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,has_refiner", [("integrated", True), ("local_global", False)])
def test_configs_instantiate(name, has_refiner):
    node = group_option("attention", name)
    cfg = OmegaConf.merge({"model": {"context": 64}, "seed": 3}, {"attention": node})
    mod = instantiate(cfg.attention)(dims=D, head=HEADS, position=None)
    assert isinstance(mod, IntegratedAttention)
    assert isinstance(mod.refiner, Refiner) == has_refiner
    assert mod.global_branch == "summary" and mod.summary_block == 64
    if has_refiner:
        assert mod.refiner.seed == 3


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"win_size": 0}, "win_size"),
        ({"backend": "cuda"}, "backend"),
        ({"global_branch": "linear"}, "global_branch"),
        ({"summary_block": 0}, "summary_block"),
        ({"refiner": {"enabled": True, "bogus": 1}}, "refiner"),
        ({"focus_iters": 0}, "focus_iters"),
    ],
)
def test_bad_config_raises(kw, key):
    with pytest.raises(ValueError, match=key):
        IntegratedAttention(D, HEADS, **kw)


@pytest.mark.parametrize("variant", ["integrated", "adaptive_span"])
def test_inside_transformer_lm_hooks_and_cached_generation(variant):
    from functools import partial

    from famlab.attention.adaptive_span import AdaptiveSpan
    from famlab.model.transformer import TransformerLM

    attention = {
        "integrated": partial(IntegratedAttention, win_size=4, max_span=6, ramp=2, refiner=REFINER),
        "adaptive_span": partial(AdaptiveSpan, max_dist=12, ramp=2, init_span=0.5, span_penalty=1e-3, block=4),
    }[variant]
    torch.manual_seed(0)
    model = TransformerLM(vocab_size=17, dims=D, layers=2, heads=HEADS, context=12, attention=attention).double()
    idx = torch.randint(0, 17, (2, 12))
    logits = model(idx)
    loss = F.cross_entropy(logits.flatten(0, 1), idx.flatten())
    aux = model.aux_loss()
    (loss if aux is None else loss + aux).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.post_step(loss.detach())
    metrics = model.metrics()
    assert "span/l0.mean" in metrics and "span/l1.mean" in metrics
    model.eval()
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        steps = [model(idx[:, :5], cache=cache)] + [model(idx[:, t : t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
