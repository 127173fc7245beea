"""Hub corpora and tokenizers without a network: one line within seconds, even when the user has
not exported HF_HUB_OFFLINE (the hub client would otherwise retry for ~24 s); a prepared
directory is used without any network."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from famlab.data import hub
from famlab.data.datamodule import LMDataModule
from famlab.data.hub_corpora import HubDataset
from famlab_testing import REPO


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")}
    return {**env, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **extra}


def _prepare(tmp_path, env, *overrides):
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "famlab.data.prepare", f"data.cache_dir={tmp_path}", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out, time.perf_counter() - t0


# an endpoint that refuses connections at once: "no network" on any machine
UNREACHABLE = {"HF_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    "data,message",
    [
        ("wikitext2", "data: could not load hub dataset 'Salesforce/wikitext': the hub is unreachable (offline)"),
        (
            "fineweb_edu",
            "data: could not load hub dataset 'HuggingFaceFW/fineweb-edu': the hub is unreachable (offline)",
        ),
        ("enwik8", "data: could not load hub dataset 'LTCB/enwik8': the hub is unreachable (offline)"),
    ],
)
def test_hub_preset_fails_within_seconds_without_offline_variables(tmp_path, data, message):
    out, seconds = _prepare(tmp_path, _env(**UNREACHABLE), f"data={data}")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[-1].startswith(f"famlab: error: {message}"), (
        out.stderr
    )  # one line, no retries
    assert seconds < 5, seconds


def test_pretrained_tokenizer_by_hub_name_fails_within_seconds(tmp_path):
    (tmp_path / "c.txt").write_text("some text\n" * 100)
    out, seconds = _prepare(
        tmp_path,
        _env(**UNREACHABLE),
        "data=text_files",
        f"data.corpus.path={tmp_path}/c.txt",
        "data.tokenizer.kind=pretrained",
        "data.tokenizer.name=gpt2",
    )
    assert out.returncode == 2 and seconds < 5, (out.stderr, seconds)
    assert out.stderr.strip() == (
        "famlab: error: data.tokenizer.name='gpt2': could not load tokenizer.json from the "
        "hub: the hub is unreachable (offline) and no cached copy exists; use "
        "data.tokenizer.kind=bytes|chars|bpe, or data.tokenizer.name=<path to a tokenizer.json>"
    )


def test_hub_preset_fails_fast_with_the_machines_own_network_settings(tmp_path):
    if hub.hub_reachable():
        pytest.skip("the hub is reachable from this machine")
    out, seconds = _prepare(tmp_path, _env(), "data=tiny_shakespeare")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and seconds < 5, (out.stderr, seconds)


def test_a_prepared_hub_corpus_needs_no_network(tmp_path, monkeypatch):
    import datasets

    rows = datasets.Dataset.from_dict({"text": [f"row {i} of a hub dataset" for i in range(300)]})
    monkeypatch.setattr("famlab.data.hub_corpora.load_hub_dataset", lambda *a, **k: rows)
    first = LMDataModule(HubDataset("someone/corpus"), {"kind": "chars"}, context=16, cache_dir=str(tmp_path)).prepare()
    assert not first.prepared.reused and first.meta["train_tokens"] > 1000

    def offline(*a, **k):
        raise AssertionError("the hub was asked although the data is prepared")

    monkeypatch.setattr("famlab.data.hub_corpora.load_hub_dataset", offline)
    again = LMDataModule(HubDataset("someone/corpus"), {"kind": "chars"}, context=16, cache_dir=str(tmp_path)).prepare()
    assert again.prepared.reused and again.prepared.path == first.prepared.path


def test_streamed_hub_rows_stop_at_the_token_budget(tmp_path, monkeypatch):
    import datasets

    def endless():
        i = 0
        while True:
            yield {"text": f"streamed row {i}"}
            i += 1

    stream = datasets.IterableDataset.from_generator(endless)
    monkeypatch.setattr("famlab.data.hub_corpora.load_hub_dataset", lambda *a, **k: stream)
    corpus = HubDataset("someone/huge", streaming=True)
    dm = LMDataModule(corpus, {"kind": "bytes"}, context=16, cache_dir=str(tmp_path), max_tokens=50_000).prepare()
    assert dm.meta["train_tokens"] + dm.meta["val_tokens"] == 50_000 and dm.meta["truncated"]
