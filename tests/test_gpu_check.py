"""``make gpu-check`` on a machine without CUDA prints its plan and exits 0; its step runner, judges
and the benchmark options it relies on work here too."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up by name
SPEC.loader.exec_module(gpu_check)
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_dry_run_lists_every_step_and_writes_nothing(tmp_path):
    results = REPO / "benchmarks" / "results"
    before = set(results.glob("*")) if results.exists() else set()
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py", "--dry-run"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for step in gpu_check.plan(tmp_path):
        assert f"[{step.name}]" in proc.stdout
    assert "pytest" in proc.stdout and "-m gpu" in proc.stdout and "--device cuda" in proc.stdout
    assert (set(results.glob("*")) if results.exists() else set()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the plain run without CUDA")
def test_without_cuda_the_plain_command_is_the_dry_run():
    proc = subprocess.run(
        [sys.executable, "scripts/gpu_check.py"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "no CUDA device" in proc.stdout


def test_every_benchmark_in_the_plan_takes_device_cuda(tmp_path):
    benches = [s for s in gpu_check.plan(tmp_path) if s.name.startswith("bench_")]
    assert {s.cmd[1] for s in benches} == {
        "benchmarks/throughput.py",
        "benchmarks/optimizer_step.py",
        "benchmarks/position.py",
        "benchmarks/attention.py",
    }
    for step in benches:
        source = (REPO / step.cmd[1]).read_text()
        assert '"--device"' in source, step.cmd[1]


def test_step_runner_records_figures_and_kills_a_step_past_its_limit(tmp_path):
    ok = gpu_check.Step(
        "json",
        [
            sys.executable,
            "-c",
            "print('noise'); print(json.dumps({'x_over_y': 0.5}))".replace("json.dumps", "__import__('json').dumps"),
        ],
        30,
        gpu_check.judge_json_last_line,
    )
    gpu_check.run_step(ok, ENV, left_s=600)
    assert ok.result["passed"] and ok.result["figures"] == {"x_over_y": 0.5}
    slow = gpu_check.Step(
        "slow", [sys.executable, "-c", "import time; time.sleep(60)"], 1, gpu_check.judge_json_last_line
    )
    gpu_check.run_step(slow, ENV, left_s=600)
    assert slow.result["rc"] == "timeout" and not slow.result["passed"] and slow.result["wall_s"] < 30
    late = gpu_check.Step("late", [sys.executable, "-c", "pass"], 100, gpu_check.judge_json_last_line)
    gpu_check.run_step(late, ENV, left_s=5)
    assert "budget" in late.result["skipped"]
    lines = gpu_check.summary_lines([ok, slow, late])
    assert [line.split()[1] for line in lines[1:]] == ["ok", "FAIL", "skip"]


def test_pytest_and_sweep_judges(tmp_path):
    step = gpu_check.Step("t", [], 1, gpu_check.judge_pytest, result={"rc": 0})
    assert gpu_check.judge_pytest(step, "5 passed, 2 skipped in 3.1s") == (True, {"passed": 5, "skipped": 2})
    assert not gpu_check.judge_pytest(step, "5 passed, 1 failed in 3.1s")[0]
    for i, status in enumerate(["completed", "diverged", "completed"]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps({"status": status}))
    ok, figures = gpu_check.judge_sweep(tmp_path, report=False)(step, "")
    assert ok and figures["jobs"] == {"completed": 2, "diverged": 1}
    assert not gpu_check.judge_sweep(tmp_path, report=True)(step, "")[0]  # no report.md yet


def test_train_judge_reads_summary_and_mfu(tmp_path):
    (tmp_path / "summary.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "steps": 300,
                "final_val_loss": 1.9,
                "tokens_per_s": 4e5,
                "wall_time_s": 20,
                "n_parameters": 10,
            }
        )
    )
    (tmp_path / "metrics.csv").write_text("step,perf/mfu,val/loss\n10,0.05,\n20,0.2,\n30,0.3,\n40,,2.0\n")
    step = gpu_check.Step("train", [], 1, gpu_check.judge_train(tmp_path), result={"rc": 0})
    ok, figures = step.judge(step, "")
    assert ok and figures["mfu_median"] == 0.25 and figures["tokens_per_s"] == 4e5  # the first row is warm-up
    (tmp_path / "metrics.csv").write_text("step,val/loss\n40,2.0\n")  # no MFU: a GPU the peak table lacks
    assert not step.judge(step, "")[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_throughput_device_cuda_without_cuda_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--device", "cuda"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--device cuda: torch sees no CUDA device" in proc.stderr
