"""Training on prepared shards: a run after ``famlab.data.prepare`` equals a run that prepares its
data itself, and resume from token shards is exact (windows straddling shards)."""

from __future__ import annotations

import pytest
import torch

from famlab import api
from famlab.data.prepare import prepare
from famlab_testing import TINY


@pytest.fixture
def data(tmp_path, text_file):
    return [
        "data=text_files",
        f"data.corpus.path={text_file}",
        "data.shard_tokens=5000",
        "data.tokenizer.kind=bpe",
        "data.tokenizer.vocab_size=300",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]


def _train(tmp_path, name, *overrides):
    cfg = api.compose([*TINY, f"run_name={name}", f"out_root={tmp_path}", *overrides], run_dir=tmp_path / name)
    return api.train(cfg)


def _weights(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_prepared_run_equals_a_run_that_prepares_itself(tmp_path, data):
    own = _train(tmp_path, "own", *data[:-1], f"data.cache_dir={tmp_path / 'other'}")
    out = prepare(data)
    assert not out["reused"] and out["dtype"] == "uint16"
    ahead = _train(tmp_path, "ahead", *data)
    assert ahead["data"]["prepared"] == out["path"] and own["data"]["prepared"] != out["path"]
    assert ahead["final_val_loss"] == own["final_val_loss"]
    a, b = _weights(tmp_path / "own"), _weights(tmp_path / "ahead")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "ahead" / "tokenizer.json").read_text() == (tmp_path / "own" / "tokenizer.json").read_text()


def test_resume_on_token_shards_is_exact(tmp_path, data):
    steps = ["trainer.max_steps=8", "trainer.val_check_interval=4"]
    full = _train(tmp_path, "full", *data, *steps)
    part = _train(
        tmp_path,
        "part",
        *data,
        *steps,
        "+callbacks.stop.step=5",
        "+callbacks.stop._target_=famlab.lit.interrupt.StopAtStep",
    )
    assert part["status"] == "interrupted" and part["steps"] == 5
    resumed = _train(tmp_path, "part", *data, *steps, "resume=auto")
    assert resumed["status"] == "completed" and resumed["steps"] == 8
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], rel=1e-5)
