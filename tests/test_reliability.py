"""Reliability under faults: SIGKILL/SIGTERM and resume, failing sweep jobs, unsafe checkpoints, secrets.

Training runs here are real ``python train.py`` processes started in their own session, so a
kill reaches the whole process group; every test waits for (or kills) what it started.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from famlab import api
from famlab.errors import ConfigError
from famlab_testing import REPO, TINY

# ~2 s of training after a ~10 s start-up; a checkpoint (last.ckpt) every 2 steps
KILL_RUN = [
    *TINY,
    "model.dims=32",
    "model.context=32",
    "trainer.max_steps=30",
    "trainer.val_check_interval=2",
    "data.val_batches=1",
]
STATEFUL = {
    "fam": ["optimizer=fam", "optimizer.analysis.fam_start_step=2", "optimizer.lr=0.05"],
    "integrated": [
        "attention=integrated",
        "attention.win_size=8",
        "attention.max_span=16",
        "attention.refiner.update_every=2",
        "attention.refiner.epsilon=0.5",
    ],
}


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.update(extra)
    return env


_LAUNCHED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_orphans():
    """Whatever a test started is gone when it ends, failed or not."""
    yield
    while _LAUNCHED:
        proc = _LAUNCHED.pop()
        if proc.poll() is None:
            _stop(proc)


def _launch(args: list[str], log: Path, **env) -> subprocess.Popen:
    """``python train.py <args>`` in a new session (its own process group)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "train.py", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env(**env),
        )
    _LAUNCHED.append(proc)
    return proc


def _stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=120)


def _val_count(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "summary.json").read_text()).get("val_history") or [])
    except (OSError, ValueError):
        return 0


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """Poll every 2 ms until ``ready()``; False when the process ended first."""
    t_end = time.monotonic() + timeout
    while proc.poll() is None:
        if ready():
            return True
        if time.monotonic() > t_end:
            _stop(proc)
            raise TimeoutError("training process made no progress")
        time.sleep(0.002)
    return False


def _weights(run_dir: Path) -> dict:
    """Model weights and buffers plus every optimizer state tensor (FAM's momentum, band history, RNG)."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    flat = dict(state["state_dict"])
    for i, opt in enumerate(state["optimizer_states"]):
        for p, s in opt["state"].items():
            flat.update({f"optimizer{i}.{p}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
        for device, rng in (opt.get("fam_rng") or {}).items():  # FAM: one generator state per device type
            flat[f"optimizer{i}.fam_rng.{device}"] = rng
    return flat


def _assert_same_weights(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _reference(tmp_path: Path, overrides: list[str]) -> dict:
    """The uninterrupted run, in-process."""
    cfg = api.compose([*overrides, "run_name=ref", f"out_root={tmp_path}"], run_dir=tmp_path / "ref")
    assert api.train(cfg)["status"] == "completed"
    return _weights(tmp_path / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(STATEFUL))
def test_sigkill_at_random_moments_then_resume_auto_matches_uninterrupted(tmp_path, variant):
    overrides = [*KILL_RUN, *STATEFUL[variant]]
    args = [*overrides, f"out_root={tmp_path}", "run_name=k", "resume=auto"]
    run_dir, ckpt_dir = tmp_path / "train" / "runs" / "k", tmp_path / "train" / "runs" / "k" / "checkpoints"
    rng = random.Random(f"kill-{variant}")
    log, kills, strays = tmp_path / "k.log", 0, 0
    # first kill: the moment a checkpoint write starts (last.ckpt.tmp exists); then random moments
    triggers = [lambda: any(ckpt_dir.glob("*.tmp"))]
    for _ in range(2):
        n, delay = rng.randint(2, 9), rng.uniform(0.0, 0.3)
        triggers.append(lambda n=n, delay=delay: _val_count(run_dir) >= n and (time.sleep(delay) or True))
    for ready in triggers:
        proc = _launch(args, log)
        if _wait_for(proc, ready):
            _stop(proc)
            kills += 1
            strays += len(list(ckpt_dir.glob("*.tmp")))
        else:
            break
    print(f"{variant}: {kills} kills, {strays} stray .tmp files left by them")
    if any(ckpt_dir.glob("*.tmp")) or not strays:  # always exercise the "killed mid-save" file
        (ckpt_dir / "last.ckpt.tmp").parent.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "last.ckpt.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    proc = _launch(args, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert kills >= 2, "the run finished before it could be killed; give it more steps"
    assert summary["status"] == "completed" and summary["steps"] == 30
    steps = [r["step"] for r in summary["val_history"]]
    assert steps == list(range(2, 31, 2))  # one entry per validation, none lost or repeated
    assert not list(ckpt_dir.glob("*.tmp")), "a stray half-written checkpoint was left behind"
    assert [p.name for p in ckpt_dir.glob("best-*.ckpt")] == [f"best-step={summary['best_val_step']}.ckpt"]
    weights = _weights(run_dir)
    if variant == "integrated":  # the Q-learning refiner really acted
        assert any(k.endswith("refiner.q_table") and v.abs().sum() > 0 for k, v in weights.items())
    else:
        assert any(k.endswith(".band_ema") and v.abs().sum() > 0 for k, v in weights.items())  # FAM analysed
    _assert_same_weights(_reference(tmp_path, overrides), weights)


@pytest.mark.slow
def test_sigterm_writes_last_checkpoint_at_current_step_and_resume_completes(tmp_path):
    overrides = [*KILL_RUN, *STATEFUL["fam"], "trainer.max_steps=100", "trainer.val_check_interval=10"]
    args = [*overrides, f"out_root={tmp_path}", "run_name=t", "resume=auto"]
    run_dir, log = tmp_path / "train" / "runs" / "t", tmp_path / "t.log"
    proc = _launch(args, log)
    assert _wait_for(proc, lambda: _val_count(run_dir) >= 1), log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)  # around step 10 of 100
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    assert 10 <= state["global_step"] < 100 and state["global_step"] == summary["steps"]
    assert f"at step {state['global_step']}" in summary["error"]
    proc = _launch(args, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 100 and summary["error"] is None
    _assert_same_weights(_reference(tmp_path, overrides), _weights(run_dir))


@pytest.mark.slow
def test_reduced_soak_two_parallel_jobs_killed_and_relaunched(tmp_path):
    """benchmarks/soak.py with 2 joblib jobs (FAM + Q-learning refiner), one group kill: 30-90 s."""
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/soak.py",
            "--optimizers",
            "fam_soak",
            "--attentions",
            "standard,integrated",
            "--steps",
            "16",
            "--kills",
            "1",
            "--out",
            str(tmp_path / "soak"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # every kill is relaunched; a kill may land after both jobs finished (late), then the relaunch is a no-op
    assert result["jobs"] == 2 and result["kills"] == 1 and result["relaunches"] >= 1 and result["late_kills"] <= 1
    assert result["all_completed"] and result["all_checks_passed"] and result["max_weight_diff"] <= 1e-5


# --- failing sweep jobs ---------------------------------------------------------------------------


def test_sweep_records_failed_and_diverged_jobs_and_compare_lists_them(tmp_path):
    """heads=3 cannot divide dims=32 (ConfigError) and lr=1e30 diverges (NaN guard); the rest finish."""
    sweep_args = [
        *KILL_RUN,
        "trainer.max_steps=8",
        "trainer.val_check_interval=4",
        "model.heads=3,4",
        "optimizer.lr=1e-3,1e30",
        f"out_root={tmp_path}",
        "sweep_name=s",
    ]
    out = subprocess.run(
        [sys.executable, "train.py", "-m", *sweep_args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "train" / "multiruns" / "s"
    summaries = {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(summaries) == [0, 1, 2, 3]  # every job keeps a summary, failed ones included
    for job in (0, 1):
        assert summaries[job]["status"] == "failed"
        assert summaries[job]["error"] == "ConfigError: model.heads=3 must divide model.dims=32"
        assert not (sweep / str(job) / "checkpoints").exists()
    assert summaries[2]["status"] == "completed" and summaries[2]["steps"] == 8
    assert summaries[3]["status"] == "diverged" and "non-finite loss or gradient at step" in summaries[3]["error"]
    report = subprocess.run(
        [sys.executable, "-m", "famlab.cli", "compare", str(sweep), "--no-plots"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert report.returncode == 0, report.stderr[-3000:]
    text = (sweep / "report" / "report.md").read_text()
    assert "1 failed" in text and "1 diverged" in text
    assert f"`{sweep / '0'}` (model.heads=3,optimizer.lr=0.001): **failed** — ConfigError: model.heads=3" in text
    assert f"`{sweep / '3'}` (model.heads=4,optimizer.lr=1e+30): **diverged** — non-finite loss" in text


# --- bad checkpoints and run directories ----------------------------------------------------------


def _tiny_run(tmp_path, name: str, *overrides) -> dict:
    cfg = api.compose(
        [*KILL_RUN, "trainer.max_steps=2", f"run_name={name}", f"out_root={tmp_path}", *overrides],
        run_dir=tmp_path / name,
    )
    return api.train(cfg)


def _snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class _Payload:
    """Pickles as a call to ``open(marker, 'w')``: loading it with full unpickling creates the file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_overwritten(tmp_path):
    _tiny_run(tmp_path, "src")
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes((tmp_path / "src" / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(
        ConfigError,
        match=rf"resume: checkpoint {bad} could not be read safely \(OSError: truncated, or "
        r"not a PyTorch zip archive\); nothing was written",
    ):
        _tiny_run(tmp_path, "new", f"resume={bad}")
    assert not (tmp_path / "new").exists()
    # resume=auto on a run whose last.ckpt was damaged: refused, every file of the run untouched
    (tmp_path / "src" / "checkpoints" / "last.ckpt").write_bytes(b"\x00" * 64)
    before = _snapshot(tmp_path / "src")
    with pytest.raises(ConfigError, match="could not be read safely"):
        _tiny_run(tmp_path, "src", "resume=auto")
    assert _snapshot(tmp_path / "src") == before
    with pytest.raises(ConfigError, match=r"resume: no checkpoint at .*missing.ckpt"):
        _tiny_run(tmp_path, "new", f"resume={tmp_path / 'missing.ckpt'}")
    with pytest.raises(ConfigError, match=r"checkpoint .* could not be read"):
        api.load_run(tmp_path / "src", which="last")


def test_checkpoint_of_another_model_config_is_refused_before_writing(tmp_path):
    _tiny_run(tmp_path, "small")
    ckpt = tmp_path / "small" / "checkpoints" / "last.ckpt"
    with pytest.raises(
        ConfigError,
        match=r"was written by another model configuration \(tok_emb.weight: checkpoint "
        r"\[\d+, 32\], model \[\d+, 64\]; \d+ tensors differ\).*nothing was written",
    ):
        _tiny_run(tmp_path, "wide", f"resume={ckpt}", "model.dims=64")
    with pytest.raises(ConfigError, match=r"missing from the checkpoint: \['blocks.0.attn.span_scale'"):
        _tiny_run(tmp_path, "other", f"resume={ckpt}", "attention=adaptive_span")
    assert not (tmp_path / "wide").exists() and not (tmp_path / "other").exists()


def test_resume_check_accepts_extra_state_modules(tmp_path):
    """attention=myelinated keeps a Python counter through get_extra_state: resume still passes the check."""
    stop = ["+callbacks.stop._target_=famlab.lit.interrupt.StopAtStep", "+callbacks.stop.step=1"]
    assert _tiny_run(tmp_path, "m", "attention=myelinated", *stop)["status"] == "interrupted"
    assert _tiny_run(tmp_path, "m", "attention=myelinated", "resume=auto")["steps"] == 2


def test_global_batch_that_processes_cannot_split_is_refused(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"^data.batch_size=3 must be divisible by the 2 processes "
        r"\(trainer.devices=2 x trainer.num_nodes=1\)$",
    ):
        _tiny_run(tmp_path, "ddp", "trainer=ddp_cpu", "data.batch_size=3")
    assert not (tmp_path / "ddp").exists()


def test_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path):
    probe = tmp_path / "probe_marker"
    torch.save({"state_dict": {}, "payload": _Payload(probe)}, tmp_path / "probe.ckpt")
    torch.load(tmp_path / "probe.ckpt", weights_only=False)  # the payload is real: full unpickling runs it
    assert probe.exists()
    marker = tmp_path / "marker"
    _tiny_run(tmp_path, "src")
    evil = torch.load(tmp_path / "src" / "checkpoints" / "last.ckpt", weights_only=True)
    evil["payload"] = _Payload(marker)
    torch.save(evil, tmp_path / "evil.ckpt")
    with pytest.raises(ConfigError, match=r"could not be read safely \(UnpicklingError: Weights only load failed"):
        _tiny_run(tmp_path, "resumed", f"resume={tmp_path / 'evil.ckpt'}")
    assert not (tmp_path / "resumed").exists()
    with pytest.raises(ConfigError, match=r"checkpoint .*evil.ckpt could not be read \(UnpicklingError"):
        api.load_run(tmp_path / "src", which=str(tmp_path / "evil.ckpt"))
    assert not marker.exists()


def test_load_run_and_compare_on_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(ConfigError, match=rf"run={tmp_path / 'notes'}: no config.yaml \(not a famlab run directory\)"):
        api.load_run(tmp_path / "notes")
    out = subprocess.run(
        [sys.executable, "-m", "famlab.cli", "compare", str(tmp_path / "notes")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode != 0 and "no run directories" in out.stderr and "Traceback" not in out.stderr


# --- secrets ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wandb_api_key_is_never_written_to_the_run_directory(tmp_path):
    secret = "famlab" + os.urandom(16).hex()
    args = [
        *[o for o in KILL_RUN if not o.startswith("logger")],
        "trainer.max_steps=4",
        "logger=wandb",
        f"out_root={tmp_path}",
        "run_name=w",
    ]
    out = subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(WANDB_API_KEY=secret),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "train" / "runs" / "w"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and (run_dir / "metrics.csv").exists()
    leaked = [str(p) for p in files if secret.encode() in p.read_bytes()]
    assert not leaked, f"WANDB_API_KEY written to {leaked}"
    assert secret not in out.stdout + out.stderr
