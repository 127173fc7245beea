"""benchmarks/machine.py names the CPU a result came from; position.py prints and records it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import machine  # noqa: E402

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
stepping\t: 8
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu
"""


def test_cpu_info_reads_model_cores_and_isa_flags():
    info = machine.cpu_info(CPUINFO, lscpu={"Core(s) per socket": "56", "Socket(s)": "2"})
    assert info["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["vendor"] == "GenuineIntel"
    assert info["isa"] == {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
    assert info["physical_cores"] == 112 and info["family_model_stepping"] == "6/143/8"
    bare = machine.cpu_info("processor\t: 0\nflags\t\t: sse2 avx2\n", lscpu={})
    assert bare["isa"]["avx2"] and not bare["isa"]["avx512f"] and bare["physical_cores"] is None
    line = machine.describe({**bare, "cpu_model": "x"})
    assert line.startswith("machine: x") and "ISA avx2" in line


def test_record_writes_a_dated_file_per_cpu_and_bench_and_appends_runs(tmp_path, capsys):
    info = {**machine.cpu_info(CPUINFO, lscpu={}), "torch": "2.x"}
    first = machine.record("position", {"ratio": 1.1}, tmp_path, info=info)
    second = machine.record("position", {"ratio": 1.2}, tmp_path, info=info)
    assert first == second and first.name.endswith("-intel-r-xeon-r-platinum-8480-position.json")
    assert first.name[:10].count("-") == 2  # YYYY-MM-DD
    data = json.loads(first.read_text())
    assert data["result"] == {"ratio": 1.2} and [r["result"]["ratio"] for r in data["runs"]] == [1.1, 1.2]
    assert data["machine"]["isa"]["amx_tile"] is True and data["runs"][0]["machine"]["cpu_model"].startswith("Intel")
    out = capsys.readouterr().out
    assert "machine: Intel(R) Xeon(R) Platinum 8480+ (GenuineIntel)" in out and f"result: {first}" in out


def test_machine_info_of_this_machine_has_torch_and_cores():
    info = machine.machine_info()
    assert info["logical_cores"] >= 1 and info["torch"] and set(info["isa"]) == set(machine.ISA_FLAGS)


def test_position_benchmark_prints_and_records_its_machine(tmp_path, capsys):
    pytest.importorskip("famlab.position.rotary")
    import position

    ratios = position.main(
        [
            "--batch",
            "1",
            "--heads",
            "1",
            "--seq",
            "8",
            "--head-dim",
            "6",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--schemes",
            "quaternion",
            "--results-dir",
            str(tmp_path),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == ratios and any(line.startswith("machine: ") for line in lines)
    (path,) = tmp_path.glob("*-position.json")
    data = json.loads(path.read_text())
    assert data["result"]["ratios"] == ratios and data["machine"]["isa"].keys() == set(machine.ISA_FLAGS)


def test_bf16_benchmark_compares_precisions_and_records_its_machine(tmp_path, capsys):
    import bf16

    ratios = bf16.main(
        [
            "--models",
            "tiny",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch",
            "2",
            "--results-dir",
            str(tmp_path),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        json.loads(lines[-1]) == ratios and set(ratios) == {"tiny_bf16_over_fp32"} and ratios["tiny_bf16_over_fp32"] > 0
    )
    assert any(line.startswith("machine: ") for line in lines) and any(line.startswith("| tiny |") for line in lines)
    (path,) = tmp_path.glob("*-bf16.json")
    tiny = json.loads(path.read_text())["result"]["models"]["tiny"]
    assert tiny["batch"] == 2 and set(tiny["tokens_per_s"]) == {"fp32", "bf16"}
    assert abs(tiny["last_loss"]["fp32"] - tiny["last_loss"]["bf16"]) < 0.1  # one step from the same weights
