"""Data: tokenizers, corpora, cached tokenization, step-seeded windows, the recall task."""

from __future__ import annotations

import math

import pytest
import torch

from famlab.data.corpora import EmbeddedCorpus, TextFiles
from famlab.data.datamodule import LMDataModule, RecallDataModule
from famlab.data.synthetic import IGNORE, RecallTask
from famlab.data.tokenizers import build_tokenizer, load_tokenizer, save_tokenizer
from famlab.data.windows import StepWindows, sample_windows, step_generator
from famlab_testing import SHAKESPEARE


@pytest.mark.parametrize("kind,extra", [("bytes", {}), ("chars", {}), ("bpe", {"vocab_size": 300})])
def test_tokenizers_round_trip_and_reload(tmp_path, kind, extra):
    text = "Rotary positions, quaternion axes: naïve café ✓\n" * 20
    tok = build_tokenizer(kind, **extra).fit(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text and max(ids) < tok.vocab_size
    save_tokenizer(tok, tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode(text) == ids and again.vocab_size == tok.vocab_size
    if kind == "bpe":
        assert len(ids) < len(text.encode())  # merges compress


def test_embedded_corpus_is_pydoc_topics():
    docs = list(EmbeddedCorpus().documents())  # a stream of documents
    assert 400_000 < len(docs[0]) < 600_000 and "for" in docs[0]
    assert EmbeddedCorpus().fingerprint == EmbeddedCorpus().fingerprint


def test_preparation_is_reused(tmp_path, text_file):
    dm = LMDataModule(TextFiles(str(text_file)), {"kind": "chars"}, context=32, cache_dir=str(tmp_path))
    dm.prepare()
    manifests = list(tmp_path.glob("*/manifest.json"))
    assert len(manifests) == 1 and not dm.prepared.reused
    mtime = manifests[0].stat().st_mtime_ns
    dm2 = LMDataModule(TextFiles(str(text_file)), {"kind": "chars"}, context=32, cache_dir=str(tmp_path)).prepare()
    assert manifests[0].stat().st_mtime_ns == mtime and dm2.prepared.reused  # reused, not rewritten
    assert torch.equal(dm.train_tokens.to_tensor(), dm2.train_tokens.to_tensor())
    text = text_file.read_text()
    assert dm.tokenizer.decode(dm.train_tokens[:50].tolist()) == text[:50]
    assert dm.meta["unigram_loss"] > 0 and dm.meta["train_tokens"] + dm.meta["val_tokens"] == len(text)


def test_windows_are_a_function_of_seed_and_step():
    tokens = torch.arange(1000)
    a = sample_windows(tokens, 16, 4, step_generator(0, 7))
    b = sample_windows(tokens, 16, 4, step_generator(0, 7))
    c = sample_windows(tokens, 16, 4, step_generator(0, 8))
    assert torch.equal(a["input"], b["input"]) and not torch.equal(a["input"], c["input"])
    assert torch.equal(a["input"][:, 1:], a["target"][:, :-1])  # next-token targets
    stream = StepWindows(lambda g, n: sample_windows(tokens, 16, n, g), 4, seed=0)
    stream.start_step = 7
    assert torch.equal(next(iter(stream))["input"], a["input"])  # resume starts at the right step


def test_ranks_slice_the_global_batch(monkeypatch):
    tokens = torch.arange(1000)
    full = next(iter(StepWindows(lambda g, n: sample_windows(tokens, 8, n, g), 4, seed=3)))
    parts = []
    for rank in range(2):
        monkeypatch.setattr("famlab.data.windows.world", lambda r=rank: (r, 2))
        parts.append(next(iter(StepWindows(lambda g, n: sample_windows(tokens, 8, n, g), 4, seed=3)))["input"])
    assert torch.equal(parts[0], full["input"][0::2]) and torch.equal(parts[1], full["input"][1::2])


def test_recall_task_targets_are_the_queried_values():
    task = RecallTask(num_keys=64, num_values=16)
    batch = task.batch(64, 3, torch.Generator().manual_seed(0))
    x, y = batch["input"], batch["target"]
    assert x.shape == y.shape == (3, 64)
    for b in range(3):
        pairs = {int(x[b, i]): int(x[b, i + 1]) for i in range(0, 32, 2)}
        scored = (y[b] != IGNORE).nonzero().flatten()
        assert len(scored) == 16
        for p in scored.tolist():
            assert int(x[b, p]) in pairs and y[b, p] == pairs[int(x[b, p])]
            assert x[b, p] < 64 and 64 <= y[b, p] < 80


def test_recall_datamodule_eval_at_longer_context():
    dm = RecallDataModule(num_keys=512, context=32)
    batches = dm.eval_batches(256, 2, batch_size=2)
    assert batches[0]["input"].shape == (2, 256)
    assert dm.meta["unigram_loss"] == pytest.approx(math.log(64))


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="../shared/data/tinyshakespeare.txt is absent")
def test_tinyshakespeare_through_text_files(tmp_path):
    dm = LMDataModule(TextFiles(str(SHAKESPEARE)), {"kind": "chars"}, context=256, cache_dir=str(tmp_path)).prepare()
    assert dm.vocab_size == 65 and dm.meta["train_tokens"] + dm.meta["val_tokens"] == 1_115_394
