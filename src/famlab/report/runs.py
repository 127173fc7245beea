"""Discover and load run directories written by the training pipeline (no torch, no model import).

A run directory is any directory holding ``config.yaml`` or ``summary.json`` (found at any depth
below the given paths; ``.hydra``, ``checkpoints``, ``plots``, ``wandb`` and ``report`` are never
runs). Status: the summary's ``status`` (completed, diverged, pruned, failed, interrupted, running) when it
exists, except that a ``running`` run whose ``famlab.lock`` no process holds died while running and
is reported ``interrupted``; ``running`` when only ``metrics.csv`` exists (still running, or killed before its first
summary); ``missing`` when neither exists; ``failed`` when the summary cannot be read. A Hydra
``multirun.yaml`` at a sweep root also yields one ``missing`` entry for every numbered job
directory the sweep should have made but did not.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from famlab.run_lock import lock_state

STATUSES = ("completed", "diverged", "pruned", "failed", "interrupted", "running", "missing")
NOT_RUNS = {".hydra", "checkpoints", "plots", "wandb", "report", "__pycache__"}


@dataclass
class Series:
    """One metrics.csv column: the rows where it has a value, in file order."""

    steps: list[float]
    values: list[float]


class MetricsTable:
    """Sparse wide-format metrics (Lightning CSVLogger): ``step`` plus one column per metric."""

    def __init__(self, rows: list[dict[str, str]], columns: list[str]):
        self.rows = rows
        self.columns = columns

    @classmethod
    def read(cls, path: Path) -> MetricsTable:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = [row for row in reader]
            return cls(rows, list(reader.fieldnames or []))

    def series(self, column: str) -> Series:
        steps, values = [], []
        for row in self.rows:
            cell, step = (row.get(column) or "").strip(), (row.get("step") or "").strip()
            if not cell or not step:
                continue
            try:
                value, at = float(cell), float(step)
            except ValueError:
                continue
            steps.append(at)
            values.append(value)
        return Series(steps, values)

    def paired(self, column: str, other: str) -> list[tuple[float, float, float | None]]:
        """``(step, value, other value on the same row or None)`` for the rows where ``column`` is set."""
        out = []
        for row in self.rows:
            try:
                step, value = float(row.get("step") or ""), float(row.get(column) or "")
            except ValueError:
                continue
            out.append((step, value, finite((row.get(other) or "").strip() or None)))
        return out

    @property
    def last_step(self) -> float | None:
        steps = [float(r["step"]) for r in self.rows if (r.get("step") or "").strip()]
        return max(steps) if steps else None


@dataclass
class Run:
    """One run directory with its summary, resolved config and curves (any of them may be absent)."""

    path: Path
    status: str
    error: str | None = None
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: MetricsTable | None = None
    overrides: list[str] = field(default_factory=list)
    choices: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def seed(self):
        return self.summary.get("seed", self.config.get("seed"))

    @property
    def lr(self) -> float | None:
        lr = finite(self.summary.get("lr"))
        optimizer = self.config.get("optimizer")
        return lr if lr is not None or not isinstance(optimizer, dict) else finite(optimizer.get("lr"))

    @property
    def experiment_meta(self) -> dict:
        meta = self.config.get("experiment_meta")
        return meta if isinstance(meta, dict) else {}


def _read_yaml(path: Path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def _hydra_fallback(path: Path) -> tuple[list[str], dict]:
    """Overrides and group choices from Hydra's per-job ``.hydra`` files (runs without a summary)."""
    overrides, choices = [], {}
    for candidate in (path / "overrides.yaml", path / ".hydra" / "overrides.yaml"):
        if candidate.is_file():
            loaded = _read_yaml(candidate)
            overrides = [str(o) for o in loaded] if isinstance(loaded, list) else []
            break
    hydra_file = path / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        loaded = _read_yaml(hydra_file) or {}
        runtime = (loaded.get("hydra") or {}).get("runtime") or {}
        choices = {str(k): str(v) for k, v in (runtime.get("choices") or {}).items()}
    return overrides, choices


def load_run(path: str | Path) -> Run:
    """Load one run directory; never raises on a broken run (the problem is recorded instead)."""
    path = Path(path)
    run = Run(path=path, status="missing")
    problems = []
    if (path / "config.yaml").is_file():
        try:
            run.config = _read_yaml(path / "config.yaml") or {}
        except (yaml.YAMLError, OSError) as exc:
            problems.append(f"config.yaml unreadable: {exc}")
    if (path / "metrics.csv").is_file():
        try:
            run.metrics = MetricsTable.read(path / "metrics.csv")
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            problems.append(f"metrics.csv unreadable: {exc}")
    try:
        run.overrides, run.choices = _hydra_fallback(path)
    except (yaml.YAMLError, OSError, AttributeError) as exc:
        problems.append(f".hydra files unreadable: {exc}")
    summary_file = path / "summary.json"
    if summary_file.is_file():
        try:
            run.summary = json.loads(summary_file.read_text())
            run.status = str(run.summary.get("status") or "completed")
            run.error = run.summary.get("error")
        except (json.JSONDecodeError, OSError) as exc:
            run.status, run.error = "failed", f"summary.json unreadable: {exc}"
        if run.summary.get("overrides") is not None:
            run.overrides = [str(o) for o in run.summary["overrides"]]
        if run.summary.get("choices"):
            run.choices = {str(k): str(v) for k, v in run.summary["choices"].items()}
    elif (path / "metrics.csv").is_file():
        run.status, run.error = "running", "no summary.json yet (still running, or killed)"
    else:
        run.status, run.error = "missing", "no summary.json and no metrics.csv"
    if run.status == "running" and lock_state(path) == "free":
        run.status = "interrupted"
        run.error = "died while running (no process holds its lock); continue with resume=auto"
    if run.status not in STATUSES:
        problems.append(f"unknown status {run.status!r}")
        run.status = "failed"
    if problems:
        run.error = "; ".join(([run.error] if run.error else []) + problems)
    return run


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "summary.json").is_file()


def _walk(root: Path) -> list[Path]:
    if is_run_dir(root):
        return [root]
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if child.name in NOT_RUNS or child.name.startswith("."):
            continue
        found.extend(_walk(child))
    return found


def _sweep_size(overrides: list[str]) -> int | None:
    """Number of jobs a Hydra basic sweep expands to (comma lists and range()); None if unsure."""
    total = 1
    for item in overrides:
        _, _, value = str(item).partition("=")
        if re.search(r"\b(choice|interval|tag|glob|sort|shuffle)\(", value):
            return None
        match = re.fullmatch(r"range\(([^)]*)\)", value.strip())
        if match:
            bounds = [float(x) for x in match.group(1).split(",")]
            start, stop, step = ([0.0] + bounds + [1.0])[:3] if len(bounds) == 1 else (bounds + [1.0])[:3]
            total *= max(0, math.ceil((stop - start) / step))
        elif "," in value and not re.search(r"[\[\]{}'\"]", value):
            total *= len(value.split(","))
    return total


def sweep_grid(task: list[str], params: dict) -> list[str]:
    """The sweep's axes as ``key=value`` items: the sweeper's config ``params``, each replaced by a
    command-line override of the same key (Hydra's basic sweeper lets the command line win; the
    two are never multiplied). Keys match with ``+``/``++``/``~`` prefixes stripped."""
    axes: dict[str, str] = {}
    for key, value in (params or {}).items():
        axes[str(key).lstrip("+~").strip()] = f"{key}={value}"
    for item in task:
        key, sep, _ = str(item).partition("=")
        if sep:
            axes[key.lstrip("+~").strip()] = str(item)
    return list(axes.values())


def expected_missing(sweep: Path, found: list[Path]) -> list[Run]:
    """Numbered job dirs that ``multirun.yaml`` implies but that do not exist (or hold no run).

    Only for the default ``hydra.sweep.subdir: ${hydra.job.num}`` layout with at least one numbered
    job present; the size counts comma lists and ``range()`` over ``sweep_grid`` (a command-line
    sweep replaces the sweeper param of the same key), so at most ``expected - found`` are reported.
    """
    manifest = sweep / "multirun.yaml"
    if not manifest.is_file():
        return []
    try:
        hydra = (_read_yaml(manifest) or {}).get("hydra") or {}
        subdir = str((hydra.get("sweep") or {}).get("subdir", "${hydra.job.num}"))
        task = [str(t) for t in (hydra.get("overrides") or {}).get("task") or []]
        params = (hydra.get("sweeper") or {}).get("params") or {}
        size = _sweep_size(sweep_grid(task, params))
    except (yaml.YAMLError, OSError, ValueError, AttributeError):
        return []
    numbered = any(p.parent == sweep and p.name.isdigit() for p in found)
    if not size or subdir != "${hydra.job.num}" or not numbered:
        return []  # job dirs are not numbered: which ones are absent cannot be told
    present = {p.resolve() for p in found}
    missing = []
    for num in range(size):
        job = sweep / str(num)
        if job.resolve() not in present and not any(p.resolve().is_relative_to(job.resolve()) for p in present):
            missing.append(
                Run(path=job, status="missing", error="job expected from multirun.yaml but no run directory")
            )
    return missing


def discover_runs(paths: list[str | Path]) -> list[Run]:
    """All runs below ``paths`` (sweep dirs or run dirs), plus expected-but-absent sweep jobs."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            runs.append(Run(path=root, status="missing", error="path does not exist"))
            continue
        dirs = _walk(root) if root.is_dir() else []
        for d in dirs:
            if d.resolve() not in seen:
                seen.add(d.resolve())
                runs.append(load_run(d))
        if root.is_dir():
            runs.extend(expected_missing(root, dirs))
    return runs


def finite(value) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


__all__ = ["MetricsTable", "Run", "Series", "STATUSES", "discover_runs", "finite", "load_run"]
