"""famlab.evaluate: per-length loss/accuracy of a run, reports, summary merge, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict

from famlab import api, evaluate
from famlab.lit.summary import read_summary, write_json


def make_run(tmp_path: Path, overrides: list[str]) -> Path:
    """A run directory as the pipeline writes it (config.yaml, summary.json, checkpoint), untrained weights."""
    run = tmp_path / "run"
    cfg = api.compose(
        ["model=tiny", "model.context=16", "data.batch_size=4", "data.val_batches=2", *overrides], run_dir=run
    )
    with open_dict(cfg):
        cfg.pop("hydra")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.manual_seed(0)
    model = api.build_model(cfg)
    (run / "checkpoints").mkdir()
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, run / "checkpoints" / "last.ckpt"
    )
    write_json(
        run / "summary.json",
        {"status": "completed", "choices": {"position": "quaternion", "data": "x"}, "eval": {"other": 1}},
    )
    return run


def test_recall_run_scored_per_length_and_reported(tmp_path):
    run = make_run(tmp_path, ["data=recall", "position=quaternion", "data.num_keys=16"])
    report = evaluate.evaluate_run(run, [16, 32, 128], batches=2, batch_size=3, checkpoint="last", device="cpu")
    lengths = report["context_lengths"]
    assert list(lengths) == ["16", "32", "128"] and report["trained_context"] == 16
    # the trained-length entry equals a direct computation on the same fixed batches
    loaded = api.load_run(run, which="last")
    batches = loaded.datamodule.eval_batches(32, 2, 3)
    with torch.no_grad():
        logits = torch.cat([loaded.model(b["input"]) for b in batches])
    target = torch.cat([b["target"] for b in batches])
    scored = target != -100
    expected = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100)
    assert lengths["32"]["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert lengths["32"]["accuracy"] == pytest.approx(
        ((logits.argmax(-1) == target) & scored).sum().item() / scored.sum().item()
    )
    assert lengths["32"]["scored"] == scored.sum().item()
    assert lengths["32"]["bpc"] == pytest.approx(lengths["32"]["loss"] / torch.log(torch.tensor(2.0)).item())
    assert "note" in lengths["128"] and "note" not in lengths["32"]  # 128 // 4 > num_keys
    summary = read_summary(run)
    assert summary["eval"]["other"] == 1 and summary["status"] == "completed"
    assert summary["eval"]["context_lengths"]["16"]["loss"] == lengths["16"]["loss"]
    assert json.loads((run / "eval_context.json").read_text())["context_lengths"]["128"]["times_trained"] == 8
    md = (run / "eval_context.md").read_text()
    assert "| 128 | 8 |" in md and "position=quaternion" in md
    assert (run / "plots" / "eval_context.png").stat().st_size > 1000


def test_too_long_for_validation_split_is_recorded_not_fatal(tmp_path, text_file):
    run = make_run(tmp_path, ["data=text_files", f"data.corpus.path={text_file}", "position=rotary"])
    report = evaluate.evaluate_run(run, [16, 10**6], batches=1, batch_size=2, checkpoint="last", device="cpu")
    assert "longer than the validation split" in report["context_lengths"][str(10**6)]["error"]
    ok = report["context_lengths"]["16"]
    assert 0 < ok["loss"] < 10 and ok["bpc"] > 0 and ok["scored"] == 32
    assert "loss" not in read_summary(run)["eval"]["context_lengths"][str(10**6)]


def test_cli_defaults_and_bad_input(tmp_path, capsys):
    run = make_run(tmp_path, ["data=recall", "position=compact", "data.num_keys=16"])
    assert evaluate.main([f"run={run}", "eval.checkpoint=last", "eval.batches=1"]) == 0
    assert list(json.loads(capsys.readouterr().out.strip().splitlines()[-1])) == ["16", "32", "64"]
    with pytest.raises(SystemExit, match="context_lengths"):
        evaluate.main([f"run={run}", "eval.checkpoint=last", "eval.context_lengths=[0,abc]"])
    with pytest.raises(SystemExit, match="unknown eval keys"):
        evaluate.main([f"run={run}", "eval.lengths=[32]"])
    with pytest.raises(SystemExit, match="run="):
        evaluate.main([])
