"""Data presets: documented keys (no ``+`` needed), the hub presets' scale settings, and claim
experiments that name no file outside the repository."""

from __future__ import annotations

import pytest

from famlab import api
from famlab_testing import CONF, TINY, options

TEXT_OPTIONS = [o for o in options("data") if o != "recall"]


@pytest.mark.parametrize("option", TEXT_OPTIONS)
def test_text_presets_document_their_keys(option):
    cfg = api.compose(
        [
            *TINY,
            f"data={option}",
            "data.tokenizer.vocab_size=1024",
            "data.tokenizer.train_chars=1000",
            "data.max_tokens=1000",
            "data.num_proc=2",
        ]
    )
    assert cfg.data.tokenizer.vocab_size == 1024 and cfg.data.max_tokens == 1000
    assert cfg.data.tokenizer.kind in ("bytes", "chars", "bpe", "pretrained")


def test_scale_presets():
    fw = api.compose(["data=fineweb_edu"]).data
    assert (fw.corpus.hub_name, fw.corpus.config, fw.corpus.streaming) == (
        "HuggingFaceFW/fineweb-edu",
        "sample-10BT",
        True,
    )
    assert fw.max_tokens and fw.tokenizer.kind == "pretrained" and fw.tokenizer.name == "gpt2"
    e8 = api.compose(["data=enwik8"]).data
    assert (e8.corpus.train_bytes, e8.corpus.val_bytes, e8.tokenizer.kind) == (90_000_000, 5_000_000, "bytes")
    assert {"openwebtext", "tinystories", "wikitext103", "stdlib", "table_files", "saved_dataset"} <= set(
        options("data")
    )


def test_no_experiment_reads_files_outside_the_repository():
    for path in (CONF / "experiment").glob("*.yaml"):
        assert "../shared" not in path.read_text(), path.name
    for name in ("claim_convergence", "claim_convergence_lr", "claim_stability", "claim_long_context"):
        assert api.compose([f"experiment={name}"]).hydra.runtime.choices.data == "fineweb_edu", name
    assert api.compose(["experiment=claim_compute"]).hydra.runtime.choices.data == "enwik8"
