"""Prepared token shards: identical to direct tokenization, reused, parallel == serial, windows
across shard boundaries, token budgets, dtype by vocabulary, concurrent preparation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from famlab.data.corpora import TextFiles
from famlab.data.datamodule import LMDataModule
from famlab.data.preparation import prepare_corpus
from famlab.data.tokenizers import build_tokenizer
from famlab.data.windows import sample_windows, step_generator
from famlab.errors import ConfigError
from famlab_testing import REPO


def _corpus_dir(tmp_path, files=3, lines=4000):
    d = tmp_path / "texts"
    d.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "rotary", "momentum", "span", "layer", "café", "naïve"]
    for f in range(files):
        (d / f"part{f}.txt").write_text(
            "\n".join(f"{f}:{i} {words[i % 10]} then {words[(i * 7 + f) % 10]}." for i in range(lines)) + "\n"
        )
    return d


@pytest.mark.parametrize("kind", ["bytes", "chars", "bpe"])
def test_shards_hold_exactly_the_tokenized_text(tmp_path, kind):
    d = _corpus_dir(tmp_path)
    tok_cfg = {"kind": kind, "vocab_size": 300}
    p = prepare_corpus(TextFiles(str(d)), tok_cfg, str(tmp_path / "cache"), val_fraction=0.1, shard_tokens=10_000)
    text = "".join((d / f"part{i}.txt").read_text() for i in range(3))
    train, val = p.split("train"), p.split("val")
    ids = torch.cat([train.to_tensor(), val.to_tensor()])
    if kind != "bpe":  # bpe: pieces are tokenized separately, so compare by decoding
        expected = build_tokenizer(kind).fit(text[: int(len(text) * 0.9)]).encode(text)
        assert ids.tolist() == expected
    assert p.tokenizer.decode(ids.tolist()) == text
    m = p.manifest
    assert m["dtype"] == "uint16" and m["total_tokens"] == len(ids) == sum(
        s["tokens"] for s in m["streams"]["all"]["shards"]
    )
    assert len(m["streams"]["all"]["shards"]) == -(-len(ids) // 10_000)  # shards of at most 10k tokens
    assert m["splits"]["val"]["tokens"] == int(len(ids) * 0.1)
    assert (p.path / "tokenizer.json").exists()


def test_windows_from_shards_equal_windows_from_a_tensor(tmp_path):
    d = _corpus_dir(tmp_path)
    p = prepare_corpus(TextFiles(str(d)), {"kind": "bytes"}, str(tmp_path / "cache"), shard_tokens=4096)
    store = p.split("train")
    flat = store.to_tensor()
    for step in range(20):  # windows of 300 tokens often straddle a 4096-token shard boundary
        a = sample_windows(store, 300, 8, step_generator(0, step))
        b = sample_windows(flat, 300, 8, step_generator(0, step))
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
    assert a["input"].dtype == torch.long


def test_parallel_preparation_equals_serial(tmp_path, monkeypatch):
    monkeypatch.setattr("famlab.data.preparation.BATCH_CHARS", 20_000)  # many batches -> the worker pool runs
    d = _corpus_dir(tmp_path)
    one = prepare_corpus(TextFiles(str(d)), {"kind": "chars"}, str(tmp_path / "c1"), num_proc=1)
    two = prepare_corpus(TextFiles(str(d)), {"kind": "chars"}, str(tmp_path / "c2"), num_proc=2)
    assert torch.equal(one.split("train").to_tensor(), two.split("train").to_tensor())
    assert one.manifest["unigram_loss"] == pytest.approx(two.manifest["unigram_loss"])


def test_token_budget_and_uint32_for_large_vocabularies(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    f = tmp_path / "c.txt"
    f.write_text(" ".join(f"w{(i * 7919) % 70_000}" for i in range(5000)))
    p = prepare_corpus(
        TextFiles(str(f)), {"kind": "pretrained", "name": str(tmp_path)}, str(tmp_path / "cache"), max_tokens=1000
    )
    assert p.manifest["dtype"] == "uint32" and p.manifest["truncated"] and p.manifest["total_tokens"] == 1000
    ids = torch.cat([p.split("train").to_tensor(), p.split("val").to_tensor()])
    assert ids[:3].tolist() == [0, 7919, 15838] and int(ids.max()) >= 65536


def test_stale_temporary_directory_is_removed_and_errors_leave_nothing(tmp_path):
    d = _corpus_dir(tmp_path, files=1, lines=100)
    cache = tmp_path / "cache"
    dm = LMDataModule(TextFiles(str(d)), {"kind": "bytes"}, context=16, cache_dir=str(cache))
    from famlab.data.preparation import prepared_path

    final = prepared_path(dm.corpus, dm.tok_cfg, str(cache), 0.1, None)
    (cache / f"{final.name}.tmp-999-dead").mkdir(parents=True)  # a killed preparation
    dm.prepare()
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [final.name]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_text("fine\n" * 10)
    (bad / "b.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ConfigError, match="b.txt is not UTF-8 text"):
        LMDataModule(TextFiles(str(bad)), {"kind": "bytes"}, context=4, cache_dir=str(tmp_path / "c2")).prepare()
    assert not [p for p in (tmp_path / "c2").iterdir() if p.is_dir()]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.max_tokens=0"], "data.max_tokens must be a positive integer or null, got 0"),
        (["data.tokenizer.kind=pretrained"], "data.tokenizer.name is required for data.tokenizer.kind=pretrained"),
        (["data.tokenizer.kind=bpe", "data.tokenizer.vocab_size=100"], "data.tokenizer.vocab_size must be >= 257"),
    ],
)
def test_bad_data_settings_are_one_line(tmp_path, overrides, message):
    from famlab.data.prepare import prepare

    with pytest.raises(ConfigError, match=message):
        prepare([f"data.cache_dir={tmp_path}", *overrides])


def test_two_processes_preparing_at_once_end_with_one_valid_preparation(tmp_path):
    d = _corpus_dir(tmp_path, files=4, lines=15_000)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "famlab.data.prepare",
        "data=text_files",
        f"data.corpus.path={d}",
        "data.tokenizer.kind=chars",
        f"data.cache_dir={cache}",
        "data.num_proc=1",
        "data.shard_tokens=500000",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dirs = [p for p in cache.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs  # no temporary directory left, one preparation
    paths = {o[0].splitlines()[0].split()[1] for o in outs}
    assert paths == {str(dirs[0])}
    assert sorted(o[0].split()[0] for o in outs) == ["prepared", "reused"]  # the loser reused the winner's
    m = json.loads((dirs[0] / "manifest.json").read_text())
    sizes = [(dirs[0] / s["file"]).stat().st_size for s in m["streams"]["all"]["shards"]]
    assert sum(sizes) == 2 * m["total_tokens"] == 2 * sum(len(f.read_text()) for f in d.iterdir())
    data = np.concatenate([np.fromfile(dirs[0] / s["file"], dtype=np.uint16) for s in m["streams"]["all"]["shards"]])
    assert len(data) == m["total_tokens"]
