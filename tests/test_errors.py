"""Bad input gets one clear line naming the key or file, before anything is written."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from famlab import api
from famlab.errors import ConfigError
from famlab_testing import REPO, TINY


def _run(tmp_path, *overrides):
    cfg = api.compose([*TINY, f"out_root={tmp_path}", "run_name=bad", *overrides], run_dir=tmp_path / "bad")
    return api.train(cfg)


CASES = [
    (["model.heads=3"], r"model.heads=3 must divide model.dims=64"),
    (["model.dims=0"], r"dims must be positive|model.dims must be a positive integer"),
    (["model.layers=-1"], r"model.layers must be a positive integer"),
    (["optimizer.lr=0"], r"optimizer.lr must be positive"),
    (["optimizer.lr=-0.1", "optimizer=sgd"], r"optimizer.lr must be positive"),
    (["data.batch_size=0"], r"data.batch_size must be a positive integer"),
    (["model.context=500000"], r"model.context=500000 is longer than the training split"),
    (["data=recall", "model.context=4"], r"model.context must be >= 8"),
    (["data=tiny_shakespeare"], r"could not load hub dataset 'karpathy/tiny_shakespeare'.*offline"),
    (
        ["data=text_files", "data.corpus.path=/nonexistent/file.txt"],
        r"data.corpus.path: /nonexistent/file.txt does not exist",
    ),
    (["data.tokenizer.kind=words"], r"data.tokenizer.kind='words' is not one of"),
    (["data=text_files"], r"data.corpus.path is required for data=text_files"),
    (
        ["optimizer=fam", "optimizer.analysis.handlers.default.n_bands=0"],
        r"optimizer.analysis.handlers.default.n_bands=0 must be an integer >= 1",
    ),
    (
        ["optimizer=fam", "optimizer.groups.attention.alpha=1.5"],
        r"optimizer.groups.attention.alpha=1.5 must be a number in \[0, 1\)",
    ),
    (
        ["optimizer=fam", "optimizer.analysis.interval=0"],
        r"optimizer.analysis.interval=0 must be an integer >= 1",
    ),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[c[0][-1] for c in CASES])
def test_bad_values_fail_before_writing(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _run(tmp_path, *overrides)
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(ConfigError, match=f"data.corpus.path: {empty} is empty"):
        _run(tmp_path, "data=text_files", f"data.corpus.path={empty}")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{binary} is not UTF-8 text"):
        _run(tmp_path, "data=text_files", f"data.corpus.path={binary}")


def test_hub_offline_fails_within_seconds(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="data=text_files"):
        _run(tmp_path, "data=wikitext2")
    assert time.perf_counter() - t0 < 10


def _cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_cli_error_is_one_line_and_leaves_no_run_dir(tmp_path):
    out = _cli(*TINY, "model.heads=5", f"out_root={tmp_path}", "run_name=x")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "famlab: error: model.heads=5 must divide model.dims=64"
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "train" / "runs" / "x").exists()


def test_cli_unknown_option_lists_choices(tmp_path):
    out = _cli("optimizer=lion", f"out_root={tmp_path}")
    assert out.returncode != 0
    assert "Could not find 'optimizer/lion'" in out.stderr and "adamw" in out.stderr
    assert not (tmp_path / "train").exists()


def test_fam_refuses_fsdp(tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer=fam needs whole parameter tensors.*trainer.strategy=fsdp"):
        _run(tmp_path, "optimizer=fam", "trainer.strategy=fsdp")


def test_fam_optimizer_refuses_dtensor_parameters():
    import torch
    from torch.distributed.tensor import DTensor

    from famlab.optim.fam import _refuse_sharded

    class FakeShard(DTensor):  # isinstance is all the check looks at
        def __new__(cls):
            return torch.Tensor._make_subclass(cls, torch.zeros(2))

        def __init__(self):
            pass

    with pytest.raises(ValueError, match="does not support FSDP-sharded parameters"):
        _refuse_sharded([{"params": [FakeShard()]}])
