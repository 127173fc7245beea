"""JSON Lines debug trace of FAMOptimizer (``debug=True``), usable without Lightning.

Every ``every`` steps (per parameter step count) the smoothed bands and alpha_eff of each FAM-active parameter
are cloned on device; every ``interval`` optimizer steps (and on :meth:`flush` / interpreter exit) they are
synced once and appended to ``{debug_dir}/fam_debug_{MMDD_HHMMSS}.jsonl``, one object per line:
``{"step", "name", "group", "handler", "alpha_eff", "bands"}``. Settings go to a sidecar ``.settings.json``.

The file is append-only, so no record is ever rewritten or dropped; parameter names are unique across groups;
the final flush runs from ``weakref.finalize``, so it happens at interpreter exit even when the optimizer is never
garbage-collected. docs/provenance.md §1.5 compares this with the reference debug dump.
"""

from __future__ import annotations

import json
import time
import weakref
from pathlib import Path

import torch


def _write(records: list, path: Path, settings: dict) -> None:
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_suffix(".settings.json")
    if not sidecar.exists():
        sidecar.write_text(json.dumps({"optimizer": "FAMOptimizer", "settings": settings}, indent=2))
    with path.open("a") as fh:
        for step, name, group, handler, alpha, bands in records:
            fh.write(
                json.dumps(
                    {
                        "step": step,
                        "name": name,
                        "group": group,
                        "handler": handler,
                        "alpha_eff": float(alpha),
                        "bands": bands.float().cpu().tolist(),
                    }
                )
                + "\n"
            )
    records.clear()


class FAMDebugWriter:
    """Buffers device tensors and appends them to a JSONL file every ``interval`` optimizer steps."""

    def __init__(self, debug_dir: str, interval: int, every: int, settings: dict):
        self.path = Path(debug_dir) / f"fam_debug_{time.strftime('%m%d_%H%M%S')}.jsonl"
        self.interval, self.every, self.settings = int(interval), int(every), settings
        self.records: list = []
        self.last_flush = 0
        self._finalizer = weakref.finalize(self, _write, self.records, self.path, settings)

    def record(self, step: int, name: str, group: str, handler: str, alpha: torch.Tensor, bands: torch.Tensor) -> None:
        if step % self.every == 0:
            self.records.append((step, name, group, handler, alpha.detach().clone(), bands.detach().clone()))

    def maybe_flush(self, step: int) -> None:
        if step - self.last_flush >= self.interval:
            self.flush()
            self.last_flush = step

    def flush(self) -> None:
        _write(self.records, self.path, self.settings)
