"""``metrics.csv`` that survives resume.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts; a resumed run must
instead keep the rows up to the restored step and drop only those logged after the checkpoint
it resumes from (they will be logged again, identically).
"""
from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger


class _KeepingWriter(_ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # keep the file; read its header so appends line up
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def truncate(self, step: int) -> None:
        """Drop saved rows whose ``step`` is > ``step`` (logged after the checkpoint resumed from)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), [r for r in reader if r.get("step") and int(float(r["step"])) <= step]
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """CSVLogger writing ``<save_dir>/metrics.csv``; ``truncate(step)`` is called on resume.

    The ``step`` column is the number of optimizer steps completed (Lightning passes one less
    while logging from ``on_train_batch_end`` and validation), matching ``summary.json``.
    """

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(metrics, None if step is None else step + 1)

    @property
    def experiment(self) -> _KeepingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment

    def truncate(self, step: int) -> None:
        self.experiment.truncate(step)
