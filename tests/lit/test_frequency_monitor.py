"""FrequencyMonitor: JSONL rows per group every N steps, fam/ metrics, plot at train end; no-op without FAM."""

from __future__ import annotations

import csv
import json

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from famlab.lit.frequency_monitor import FrequencyMonitor, plot_bands
from famlab.model.transformer import TransformerLM
from famlab.optim.factories import adamw, fam
from famlab.optim.fam_config import SEED_ANALYSIS

EARLY = {**SEED_ANALYSIS, "fam_start_step": 1, "min_size": 100}  # the analysis from step 2


class TinyLM(pl.LightningModule):
    def __init__(self, make_optimizer):
        super().__init__()
        torch.manual_seed(0)
        self.model = TransformerLM(vocab_size=20, dims=24, layers=1, heads=2, context=16)
        self.make_optimizer = make_optimizer

    def training_step(self, batch, batch_idx):
        (idx,) = batch
        return F.cross_entropy(self.model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())

    def configure_optimizers(self):
        return self.make_optimizer(self.model)

    def train_dataloader(self):
        data = torch.randint(0, 20, (64, 12), generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)


def _fit(tmp_path, make_optimizer, monitor, logger=False):
    trainer = pl.Trainer(
        max_steps=7,
        default_root_dir=tmp_path,
        callbacks=[monitor],
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
    )
    trainer.fit(TinyLM(make_optimizer))
    return trainer


def test_monitor_records_groups_logs_and_plots(tmp_path):
    make = lambda model: fam(
        model,
        lr=0.05,
        analysis=EARLY,
        debug=True,
        debug_dir=str(tmp_path / "debug"),
        debug_interval=10**6,
        debug_every=2,
    )
    logger = CSVLogger(tmp_path, name="csv", version=0)
    _fit(tmp_path, make, FrequencyMonitor(every_n_steps=2), logger)
    rows = [json.loads(line) for line in (tmp_path / "fam_bands.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [2, 4, 6]
    assert {r["group"] for r in rows} == {"attention", "embedding", "norm", "default"}
    attn = [r for r in rows if r["group"] == "attention"]
    assert all(len(r["bands"]) == 12 and r["handler"] == "attention" and r["active"] == 2 for r in attn)
    assert all(0.85 <= r["alpha_eff"] <= 0.98 for r in attn) and sum(attn[-1]["bands"]) > 0
    norm = [r for r in rows if r["group"] == "norm"]
    assert all(r["active"] == 0 and r["alpha_eff"] == pytest.approx(0.9) for r in norm)
    assert (tmp_path / "plots" / "fam_bands.png").stat().st_size > 1000
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as fh:
        header = next(csv.reader(fh))
    assert {"fam/attention.alpha_eff", "fam/attention.band11", "fam/default.band7", "fam/norm.alpha_eff"} <= set(header)
    assert "fam/norm.band0" not in header  # no active tensor in the norm group (all numel <= min_size)
    assert list((tmp_path / "debug").glob("fam_debug_*.jsonl"))  # the optimizer's own buffer flushed at train end


def test_resume_drops_rows_after_the_restored_step(tmp_path):
    make = lambda model: fam(model, lr=0.05, analysis=EARLY)
    trainer = _fit(tmp_path, make, FrequencyMonitor(every_n_steps=2, plot=False))  # rows at 2, 4, 6
    trainer.save_checkpoint(tmp_path / "at7.ckpt")
    path = tmp_path / "fam_bands.jsonl"
    with path.open("a") as fh:  # rows a crashed later attempt wrote after the checkpoint
        fh.write(json.dumps({"step": 8, "group": "attention"}) + "\n")
    resumed = pl.Trainer(
        max_steps=9,
        default_root_dir=tmp_path,
        callbacks=[FrequencyMonitor(every_n_steps=2, plot=False)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    resumed.fit(TinyLM(make), ckpt_path=tmp_path / "at7.ckpt")
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(8) == 4 and steps.count(2) == 4  # 4 groups per step, no dupes


def test_monitor_is_a_noop_without_fam(tmp_path):
    _fit(tmp_path, lambda model: adamw(model, lr=1e-3), FrequencyMonitor(every_n_steps=2))
    assert not (tmp_path / "fam_bands.jsonl").exists() and not (tmp_path / "plots").exists()


def test_plot_bands_handles_empty_file_and_validation(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert plot_bands(tmp_path / "empty.jsonl", tmp_path / "x.png") is None
    with pytest.raises(ValueError, match="every_n_steps"):
        FrequencyMonitor(every_n_steps=0)
