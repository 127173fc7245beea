"""The debug, paths, callbacks/model_checkpoint and local config groups: each key reaches the code."""

from __future__ import annotations

import subprocess
import sys

import torch

from famlab import api
from famlab_testing import REPO, TINY


def _train(tmp_path, name, *overrides):
    cfg = api.compose([*TINY, f"out_root={tmp_path}", f"run_name={name}", *overrides], run_dir=tmp_path / name)
    return cfg, api.train(cfg, tmp_path / name)


def test_debug_tiny_is_the_tests_config_and_command_line_groups_win():
    cfg = api.compose(["debug=tiny"])
    assert cfg.model.dims == 64 and cfg.trainer.max_steps == 6 and cfg.data.batch_size == 4
    assert cfg.callbacks.progress_bar is None and list(cfg.logger) == ["csv"]
    assert api.compose(["debug=tiny", "model=small"]).model.dims == 128


def test_debug_options_set_the_trainer():
    assert api.compose(["debug=fdr"]).trainer.fast_dev_run == 1
    assert api.compose(["debug=overfit"]).trainer.overfit_batches == 1
    limit = api.compose(["debug=limit"]).trainer
    assert (limit.max_steps, limit.val_check_interval, limit.limit_val_batches) == (20, 10, 2)
    assert api.compose(["debug=default"]).trainer.max_steps == 1000


def test_debug_fdr_runs_one_step(tmp_path):
    _, summary = _train(tmp_path, "fdr", "debug=fdr", "model=tiny", "logger=csv", "callbacks.progress_bar=null")
    assert summary["status"] == "completed" and summary["steps"] == 1


def test_debug_overfit_repeats_one_batch(tmp_path):
    _, summary = _train(
        tmp_path,
        "of",
        "debug=overfit",
        "model=tiny",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_steps=60",
        "optimizer.lr=0.01",
        "data.batch_size=2",
        "model.context=32",
    )
    rows = [r for r in (tmp_path / "of/metrics.csv").read_text().splitlines()[1:]]
    header = (tmp_path / "of/metrics.csv").read_text().splitlines()[0].split(",")
    col = header.index("train/loss")
    losses = [float(r.split(",")[col]) for r in rows if r.split(",")[col]]
    assert summary["status"] == "completed" and summary["steps"] == 60
    assert losses[-1] < 0.5 * losses[0], losses  # one repeated batch is memorised


def test_debug_profiler_writes_into_the_run_dir(tmp_path):
    _, summary = _train(
        tmp_path,
        "prof",
        "debug=profiler",
        "model=tiny",
        "logger=csv",
        "callbacks.progress_bar=null",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    )
    assert summary["status"] == "completed"
    profiles = list((tmp_path / "prof").glob("*profile*.txt"))
    assert profiles and "run_training_epoch" in profiles[0].read_text()


def test_paths_reach_the_code(tmp_path):
    cache, data = tmp_path / "cache", tmp_path / "hub"
    cfg = api.compose(
        [
            "debug=tiny",
            "data=tiny_shakespeare",
            f"paths.cache_dir={cache}",
            f"paths.data_dir={data}",
            f"out_root={tmp_path}",
        ],
        run_dir=tmp_path / "p",
    )
    assert cfg.data.cache_dir == str(cache) and cfg.data.corpus.cache_dir == str(data)
    assert cfg.logger.csv.save_dir == str(tmp_path / "p")
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "p" / "checkpoints")
    assert cfg.hydra.run.dir.startswith(str(tmp_path))
    cfg, summary = _train(tmp_path, "c", f"paths.cache_dir={cache}")
    assert summary["status"] == "completed" and list(cache.glob("*/manifest.json"))


def test_model_checkpoint_keys_reach_the_callback(tmp_path):
    _train(
        tmp_path,
        "ck",
        "callbacks.model_checkpoint.save_top_k=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.monitor=train/loss",
        "callbacks.model_checkpoint.filename='top-{step}'",
    )
    state = torch.load(tmp_path / "ck/checkpoints/last.ckpt", weights_only=True)
    (key,) = [k for k in state["callbacks"] if k.startswith("ModelCheckpoint")]
    assert "'monitor': 'train/loss'" in key and "'every_n_train_steps': 2" in key
    assert len(list((tmp_path / "ck/checkpoints").glob("top-step=*.ckpt"))) == 2


def test_model_checkpoint_can_be_dropped(tmp_path):
    _, summary = _train(tmp_path, "none", "callbacks.model_checkpoint=null")
    assert summary["status"] == "completed" and summary["last_checkpoint"] is None
    assert not list(tmp_path.glob("**/*.ckpt"))  # not Lightning's default checkpoint either


def test_local_group_ships_a_gitkeep_and_an_example_that_composes(tmp_path):
    local = REPO / "conf" / "local"
    assert (local / ".gitkeep").exists()
    tracked = subprocess.run(["git", "check-ignore", "-q", str(local / "example.yaml.txt")], cwd=REPO)
    assert tracked.returncode == 1  # not ignored
    assert subprocess.run(["git", "check-ignore", "-q", str(local / "default.yaml")], cwd=REPO).returncode == 0
    conf = tmp_path / "conf"
    subprocess.run(["cp", "-r", str(REPO / "conf"), str(conf)], check=True)
    body = (local / "example.yaml.txt").read_text().replace("# threads: 4", "threads: 3")
    (conf / "local" / "default.yaml").write_text(body)
    out = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job", "--config-dir", str(conf)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "threads: 3" in out.stdout
