"""TokenStore: a small store gathers its windows in memory, a large one reads each window from the
shards; both give the same windows, and a pickled store carries neither its file handles nor tokens."""

from __future__ import annotations

import pickle

import pytest
import torch

from famlab.data import shards
from famlab.data.corpora import TextFiles
from famlab.data.preparation import prepare_corpus
from famlab.data.windows import sample_windows, step_generator


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("".join(f"line {i} of the corpus, word {i * 7 % 13}.\n" for i in range(3000)))
    return prepare_corpus(TextFiles(str(d)), {"kind": "bytes"}, str(tmp_path / "cache"), shard_tokens=4096).split(
        "train"
    )


def test_in_memory_and_positional_reads_give_the_same_windows(store, monkeypatch):
    small = [sample_windows(store, 300, 8, step_generator(0, step)) for step in range(10)]
    assert store._tokens is not None and len(store._tokens) == len(store)  # read whole, once
    disk = pickle.loads(pickle.dumps(store))
    assert disk._tokens is None and disk._fds is None
    monkeypatch.setattr(shards, "IN_MEMORY_BYTES", 0)  # too large to hold: one positional read per window
    for step, a in enumerate(small):  # windows of 300 tokens often straddle a 4096-token shard boundary
        b = sample_windows(disk, 300, 8, step_generator(0, step))
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
        assert a["input"].dtype == b["input"].dtype == torch.long
    assert disk._tokens is None
