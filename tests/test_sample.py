"""famlab.sample: generate() with and without a KV cache, seeded sampling, the CLI wiring."""

from __future__ import annotations

import types

import pytest
import torch

from famlab import sample
from famlab.model.transformer import TransformerLM
from famlab.sample import generate

VOCAB = 17


def model(context: int = 32) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(VOCAB, 16, 2, 2, context).eval()


def prompt(b: int = 2, t: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(0))


def test_greedy_cached_equals_uncached_and_keeps_the_prompt():
    m, p = model(), prompt()
    out = generate(m, p, 10, temperature=0.0)
    assert out.shape == (2, 13) and torch.equal(out[:, :3], p)
    assert torch.equal(out, generate(m, p, 10, temperature=0.0, use_cache=False))
    with torch.no_grad():  # each greedy token is the argmax of the full forward on its prefix
        assert torch.equal(m(out[:, :-1])[:, 2:].argmax(-1), out[:, 3:])


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    m, p = model(), prompt()
    runs = [generate(m, p, 12, 1.0, 5, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    top1 = generate(m, p, 8, temperature=0.9, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, generate(m, p, 8, temperature=0.0))


def test_generation_past_the_context_window():
    m, p = model(context=8), prompt(t=3)
    cached = generate(m, p, 12, temperature=0.0)
    uncached = generate(m, p, 12, temperature=0.0, use_cache=False)
    assert cached.shape == uncached.shape == (2, 15)
    assert torch.equal(cached[:, :9], uncached[:, :9])  # identical until the first crop


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="temperature"):
        generate(model(), prompt(), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="prompt"):
        generate(model(), torch.zeros(1, 0, dtype=torch.long), 2)


class CharTokenizer:
    chars = "abcdefghijklmnop\n"

    def encode(self, s: str) -> list[int]:
        return [self.chars.index(c) for c in s]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


def test_cli_generates_from_a_loaded_run(monkeypatch, capsys, tmp_path):
    run = types.SimpleNamespace(cfg=None, model=model(), tokenizer=CharTokenizer(), run_dir=tmp_path)
    fake_api = types.ModuleType("famlab.api")
    fake_api.load_run = lambda path: run if str(path) == str(tmp_path) else None
    monkeypatch.setitem(__import__("sys").modules, "famlab.api", fake_api)
    text = sample.main([f"run={tmp_path}", "prompt=abc", "max_new_tokens=7", "temperature=0", "seed=1"])
    assert text.startswith("abc") and len(text) == 10
    assert capsys.readouterr().out.strip("\n") == text.strip("\n")
    with pytest.raises(SystemExit, match="run="):
        sample.main(["prompt=abc"])


def test_cli_reports_skipped_updates_for_update_gated_runs(monkeypatch, capsys, tmp_path):
    from functools import partial

    from famlab.attention.update_gated import UpdateGatedAttention

    torch.manual_seed(0)
    gated = TransformerLM(VOCAB, 16, 2, 2, 32, attention=partial(UpdateGatedAttention, update_threshold=1.0))
    run = types.SimpleNamespace(cfg=None, model=gated, tokenizer=CharTokenizer(), run_dir=tmp_path)
    fake_api = types.ModuleType("famlab.api")
    fake_api.load_run = lambda path: run
    monkeypatch.setitem(__import__("sys").modules, "famlab.api", fake_api)
    sample.main([f"run={tmp_path}", "prompt=ab", "max_new_tokens=4"])
    # 2 prompt + 3 fed tokens, 2 layers, key and value: every update skipped at threshold 1
    assert "skipped 20 of 20 key/value cache updates" in capsys.readouterr().err
