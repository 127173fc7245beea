"""``metrics.csv`` that survives resume.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts; a resumed run must
instead keep the rows up to the restored step and drop only those logged after the checkpoint
it resumes from (they will be logged again, identically). Rewrites (a new column, a resume's
truncation) go through a fsynced temporary file and a rename; appended rows are fsynced, and an
append that fails (a full disk) is cut back so no partial row is left.
"""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger

from famlab.lit.durable import DiskFull, atomic_write, is_disk_full


class _KeepingWriter(_ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # keep the file; read its header so appends line up
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def _rewrite(self, keys: list[str], rows: list[dict]) -> None:
        def write(f) -> None:
            text = _Text(f)
            writer = csv.DictWriter(text, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(self.metrics_file_path, write)
        self.metrics_keys = keys

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        self._rewrite(list(fieldnames), rows)

    def save(self) -> None:
        """Append the buffered rows (rewriting the file first when a column is new), fsynced."""
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        exists = os.path.isfile(self.metrics_file_path)
        if new_keys and exists:
            self._rewrite_with_new_header(self.metrics_keys)
        if not exists:
            self._rewrite(self.metrics_keys, [])
        size = os.path.getsize(self.metrics_file_path)
        try:
            with open(self.metrics_file_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            full = is_disk_full(e, self.log_dir)
            os.truncate(self.metrics_file_path, size)  # no partial row
            if full:
                raise DiskFull(self.metrics_file_path) from e
            raise
        self.metrics = []

    def truncate(self, step: int) -> None:
        """Drop saved rows whose ``step`` is > ``step`` (logged after the checkpoint resumed from)."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = (
                list(reader.fieldnames or []),
                [r for r in reader if r.get("step") and int(float(r["step"])) <= step],
            )
        self._rewrite(keys, rows)


class _Text:
    """A text ``write`` over a binary file, for ``csv.writer``."""

    def __init__(self, f):
        self.f = f

    def write(self, s: str) -> int:
        return self.f.write(s.encode())


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
