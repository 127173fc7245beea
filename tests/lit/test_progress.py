"""The console line counts optimizer steps in 80 columns, and the Lightning loop reads no device value
on steps that neither log nor validate (issue: prog-bar metrics were .item()-ed after every batch)."""

from __future__ import annotations

import io
import sys

import lightning.pytorch as pl
import torch

from famlab import api
from famlab.lit.progress import StepProgressBar
from famlab_testing import TINY


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class TTYProgressBar(StepProgressBar):
    """The real bar, drawing into a fake terminal so its redraw path runs every step."""

    last: TTYProgressBar | None = None

    def __init__(self, **kwargs):
        super().__init__(stream=FakeTTY(), **kwargs)
        TTYProgressBar.last = self


class CountItems(pl.Callback):
    """``torch.Tensor.item`` calls between consecutive batch starts (a whole step: loop, hooks, callbacks)."""

    items = 0
    per_step: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step
        if step > 0:
            CountItems.per_step[step] = CountItems.items - self._items0
        self._items0 = CountItems.items


def test_line_fits_80_columns_and_counts_steps():
    bar = StepProgressBar(max_width=80)
    line = bar.line(120, 1000, {"loss": 2.3456, "val": 2.4012, "tok/s": 7123.0}, elapsed=60.0, done_here=120)
    assert len(line) <= 79 and line.startswith("step 120/1000 [")
    assert "loss 2.346" in line and "val 2.401" in line and "7.1k tok/s" in line and "0:07:20 left" in line
    assert "Epoch" not in line
    huge = bar.line(10**7, 10**8, {"loss": 1e9, "val": 1e9, "tok/s": 1e9}, elapsed=1.0, done_here=1)
    assert len(huge) <= 79


def test_no_item_on_steps_that_neither_log_nor_validate(tmp_path, monkeypatch):
    real_item = torch.Tensor.item

    def counting_item(self):
        # torch's foreach Adam/AdamW read their step counters, host tensors by design (not device syncs)
        if sys._getframe(1).f_code.co_name != "_get_value":
            CountItems.items += 1
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    CountItems.items, CountItems.per_step = 0, {}
    cfg = api.compose(
        [
            *TINY,
            "trainer.max_steps=9",
            "trainer.val_check_interval=4",
            "log_every_n_steps=4",
            "++callbacks.progress_bar._target_=test_progress.TTYProgressBar",
            "++callbacks.progress_bar.refresh_rate=1",
            "+callbacks.count._target_=test_progress.CountItems",
            "logger=csv",
        ],
        run_dir=tmp_path / "r",
    )
    summary = api.train(cfg, tmp_path / "r")
    assert summary["status"] == "completed"
    quiet = {s: c for s, c in CountItems.per_step.items() if s % 4}
    assert sorted(quiet) == [1, 2, 3, 5, 6, 7], CountItems.per_step
    assert all(c == 0 for c in quiet.values()), CountItems.per_step
    assert CountItems.per_step[4] >= 1  # the logging step does read its numbers (once)
    drawn = TTYProgressBar.last.stream.getvalue().split("\r")
    assert any("step 8/9" in d and "loss" in d and "val" in d and "tok/s" in d and "left" in d for d in drawn)
    assert all(len(d.rstrip("\n")) <= 80 for d in drawn)
