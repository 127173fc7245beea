"""The machine a benchmark ran on, and the dated result file every benchmark writes.

One line per script::

    from machine import record
    path = record("position", result)   # prints the machine line, writes and returns the JSON path

``record`` writes ``benchmarks/results/<YYYY-MM-DD>-<cpu-slug>-<bench>.json`` (UTC date) holding the
machine (CPU model, vendor, logical / usable / physical cores, ISA flags avx2 / avx512f /
avx512_bf16 / amx_tile / amx_bf16, torch's CPU capability and threads, torch and Python versions,
CUDA device if any), the command line and the result. A second run on the same day and machine
appends to the file's ``runs`` list (each with its machine); ``result`` is the latest run. Scripts run as
``python benchmarks/<name>.py`` find this module on ``sys.path`` (their own folder).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def _cpuinfo(text: str | None = None) -> dict[str, str]:
    """First processor's ``key: value`` fields of ``/proc/cpuinfo`` (empty where unreadable)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines()) if v}


def cpu_info(cpuinfo_text: str | None = None, lscpu: dict[str, str] | None = None) -> dict:
    """CPU model, vendor, core counts and ISA flags from ``/proc/cpuinfo``, else ``lscpu``, else ``platform``."""
    info = _cpuinfo(cpuinfo_text)
    ls = _lscpu() if lscpu is None else lscpu
    model = info.get("model name") or ls.get("Model name") or platform.processor() or platform.machine() or "unknown"
    flags = set((info.get("flags") or ls.get("Flags") or "").split())
    physical = None
    if ls.get("Core(s) per socket", "").isdigit() and ls.get("Socket(s)", "").isdigit():
        physical = int(ls["Core(s) per socket"]) * int(ls["Socket(s)"])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": model,
        "vendor": info.get("vendor_id") or ls.get("Vendor ID") or "",
        "family_model_stepping": "/".join(
            info.get(k, ls.get(m, ""))
            for k, m in (("cpu family", "CPU family"), ("model", "Model"), ("stepping", "Stepping"))
        ),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": physical,
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "hypervisor": "hypervisor" in flags,
    }


def machine_info() -> dict:
    """:func:`cpu_info` plus torch / Python versions, torch's CPU capability and threads, CUDA device."""
    import torch

    info = cpu_info()
    info.update(
        torch=torch.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        torch_threads=torch.get_num_threads(),
        cuda_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    )
    return info


def describe(info: dict) -> str:
    """One line: ``machine: <model> (<vendor>), N cores (M usable), ISA avx2 avx512f ..., torch X``."""
    isa = " ".join(f for f, present in info["isa"].items() if present) or "none of " + "/".join(ISA_FLAGS)
    cuda = f", cuda {info['cuda_device']}" if info.get("cuda_device") else ""
    return (
        f"machine: {info['cpu_model']} ({info['vendor'] or 'unknown vendor'}), {info['logical_cores']} cores "
        f"({info['usable_cores']} usable), ISA {isa}, torch {info.get('torch', '?')} "
        f"({info.get('torch_cpu_capability', '?')}, {info.get('torch_threads', '?')} threads){cuda}"
    )


def slug(text: str) -> str:
    """Lower-case file-name form: ``AMD EPYC 9654 96-Core`` -> ``amd-epyc-9654-96-core``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "unknown"


def record(bench: str, result: dict, out_dir: str | Path | None = None, info: dict | None = None) -> Path:
    """Print the machine line and write ``<out_dir>/<date>-<cpu-slug>-<bench>.json``; returns its path."""
    info = machine_info() if info is None else info
    print(describe(info))
    now = _dt.datetime.now(_dt.timezone.utc)
    out = Path(out_dir) if out_dir is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now:%Y-%m-%d}-{slug(info['cpu_model'])}-{slug(bench)}.json"
    run = {
        "time": now.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": info,
        "result": result,
    }
    runs = []
    if path.exists():
        try:
            runs = json.loads(path.read_text()).get("runs", [])
        except (OSError, ValueError):
            runs = []
    payload = {"bench": bench, "date": f"{now:%Y-%m-%d}", "machine": info, "result": result, "runs": [*runs, run]}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    print(f"result: {path}")
    return path
