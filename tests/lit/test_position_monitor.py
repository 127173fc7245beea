"""PositionMonitor records every layer's position values to JSONL and plots them."""

from __future__ import annotations

import functools
import json

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from famlab.lit.position_monitor import PositionMonitor, position_metrics
from famlab.model.transformer import TransformerLM
from famlab.position.rotary import RotaryEmbedding


class TinyLM(pl.LightningModule):
    def __init__(self, position):
        super().__init__()
        torch.manual_seed(0)
        self.model = TransformerLM(vocab_size=20, dims=24, layers=2, heads=2, context=16, position=position)

    def training_step(self, batch, batch_idx):
        (idx,) = batch
        logits = self.model(idx[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        data = torch.randint(0, 20, (32, 12), generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)


def test_position_metrics_keys_per_layer():
    model = TransformerLM(
        vocab_size=20,
        dims=24,
        layers=3,
        heads=2,
        context=16,
        position=functools.partial(RotaryEmbedding, use_quaternion=True),
    )
    values = position_metrics(model)
    assert {"position/l0.freq_mean", "position/l2.rot_scale", "position/l1.axis0_z"} <= set(values)
    assert all(v.shape == (1,) and not v.requires_grad for v in values.values())


def test_monitor_writes_jsonl_history_and_plot(tmp_path):
    module = TinyLM(functools.partial(RotaryEmbedding, use_quaternion=True))
    monitor = PositionMonitor(every_n_steps=2)
    trainer = pl.Trainer(
        max_steps=5,
        default_root_dir=tmp_path,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module)
    rows = [json.loads(line) for line in (tmp_path / "position_values.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert rows == monitor.history
    assert rows[0]["position/l1.rot_scale"] == 1.0
    assert rows[-1]["position/l0.freq_mean"] != rows[0]["position/l0.freq_mean"]  # learned values moved
    assert rows[-1]["position/l0.axis_drift"] > 0
    assert (tmp_path / "plots" / "position.png").stat().st_size > 1000


def test_monitor_without_learned_values_writes_nothing(tmp_path):
    module = TinyLM(None)  # NoPosition: no metrics
    trainer = pl.Trainer(
        max_steps=2,
        default_root_dir=tmp_path,
        callbacks=[PositionMonitor(every_n_steps=1)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module)
    assert not (tmp_path / "position_values.jsonl").exists()
    assert not (tmp_path / "plots" / "position.png").exists()


def test_bad_interval_raises():
    with pytest.raises(ValueError, match="every_n_steps"):
        PositionMonitor(every_n_steps=0)


def test_resume_drops_rows_from_the_restored_step_on(tmp_path):
    from types import SimpleNamespace

    path = tmp_path / "position_values.jsonl"
    path.write_text("".join(json.dumps({"step": s, "position/l0.freq_mean": float(s)}) + "\n" for s in (0, 2, 4, 6)))
    module = TinyLM(functools.partial(RotaryEmbedding))
    monitor = PositionMonitor(every_n_steps=2)
    trainer = SimpleNamespace(global_step=4, is_global_zero=True, default_root_dir=str(tmp_path))
    monitor.on_train_start(trainer, module)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and rows[1]["position/l0.freq_mean"] == 2.0
    assert rows[2]["position/l0.freq_mean"] == pytest.approx(module.model.blocks[0].attn.position.freqs.mean().item())
    assert [r["step"] for r in monitor.history] == [0, 2, 4]
