"""The run directory's ``summary.json``: what ``famlab compare`` and ``load_run`` read.

Written at the start (status ``running``), at the end (``completed``), and on failure
(``failed`` or ``diverged`` with the error), always atomically (fsynced before the rename).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from famlab.lit.durable import atomic_write


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}"


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a flushed, fsynced temporary file and a rename."""
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text))


def read_summary(run_dir: Path) -> dict:
    p = Path(run_dir) / "summary.json"
    return json.loads(p.read_text()) if p.exists() else {}


def update_summary(directory: Path, **fields) -> dict:
    """Merge ``fields`` into ``summary.json`` and return the result."""
    data = read_summary(directory)
    data.update(fields)
    write_json(Path(directory) / "summary.json", data)
    return data
