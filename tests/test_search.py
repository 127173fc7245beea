"""hparams_search: famlab's Optuna sweeper (ask/tell, SQLite study in the sweep dir, resume after a kill)
and pruning from inside the training job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from famlab.errors import ConfigError
from famlab.report.groups import group_runs
from famlab.report.results import group_stats
from famlab.report.runs import discover_runs
from famlab.search import distribution
from famlab_testing import REPO, TINY

SEARCH = ["-m", "hparams_search=optuna", *TINY, "hydra.sweeper.n_trials=4"]


def _cmd(*args):
    return [sys.executable, "train.py", *args]


def _study(sweep):
    return optuna.load_study(study_name="train", storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_search_space_grammar():
    assert distribution("a", "tag(log, interval(1e-4, 1e-2))") == FloatDistribution(1e-4, 1e-2, log=True)
    assert distribution("a", "interval(1, 8)") == FloatDistribution(1.0, 8.0)
    assert distribution("a", "tag(int, interval(1, 8))") == IntDistribution(1, 8)
    assert distribution("a", "range(16, 65, 16)") == IntDistribution(16, 64, step=16)
    assert distribution("a", "choice(adamw, sgd)") == CategoricalDistribution(["adamw", "sgd"])
    with pytest.raises(ConfigError, match="hydra.sweeper.params.a"):
        distribution("a", "0.1")


@pytest.mark.slow
def test_search_completes_is_killed_and_resumes_without_repeating_trials(tmp_path):
    args = [*SEARCH, f"out_root={tmp_path}", "sweep_name=s"]
    sweep = tmp_path / "train" / "multiruns" / "s"
    proc = subprocess.Popen(
        _cmd(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                states = (
                    [t.state for t in _study(sweep).get_trials(deepcopy=False)]
                    if (sweep / "optuna.db").exists()
                    else []
                )
            except KeyError:  # the database exists, the study is not created yet
                states = []
            if states.count(optuna.trial.TrialState.COMPLETE) >= 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the search never finished 2 trials")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = {t.number: t.params for t in _study(sweep).get_trials() if t.state == optuna.trial.TrialState.COMPLETE}
    stamps = {n: (sweep / str(n) / "summary.json").stat().st_mtime_ns for n in first}
    out = subprocess.run(_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = _study(sweep).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert {t.number: t.params for t in complete if t.number in first} == first  # kept, not rerun
    assert {n: (sweep / str(n) / "summary.json").stat().st_mtime_ns for n in first} == stamps
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == 4  # the resumed sampler draws new points
    best = yaml.safe_load((sweep / "optuna_best.yaml").read_text())
    assert best["best_value"] == min(t.value for t in complete)
    assert f"best trial {best['best_trial']}: " in out.stdout
    for t in complete:  # each trial returned optimized_metric (best_val_loss) of its own run
        summary = json.loads((sweep / str(t.number) / "summary.json").read_text())
        assert summary["best_val_loss"] == pytest.approx(t.value)


@pytest.mark.slow
def test_pruner_stops_a_bad_learning_rate_before_its_last_step(tmp_path):
    out = subprocess.run(
        _cmd(
            "-m",
            "hparams_search=optuna_pruned",
            *TINY,
            "trainer.max_steps=12",
            "trainer.val_check_interval=3",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.params={optimizer.lr:'interval(1e-4, 1.0)'}",
            "hydra.sweeper.enqueue=[{optimizer.lr:0.003},{optimizer.lr:0.3}]",
            f"out_root={tmp_path}",
            "sweep_name=p",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "train" / "multiruns" / "p"
    trials = _study(sweep).get_trials()
    assert trials[0].params["optimizer.lr"] == 0.003 and trials[0].state == optuna.trial.TrialState.COMPLETE
    bad = trials[1]
    assert bad.params["optimizer.lr"] == 0.3 and bad.state == optuna.trial.TrialState.PRUNED
    summary = json.loads((sweep / "1" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["steps"] < 12
    assert max(bad.intermediate_values) < 12
    # famlab compare: the pruned run counts as finished (censored), its loss stays out of the loss estimates
    groups = group_runs(discover_runs([sweep]))
    (pruned_group,) = [g for g in groups if any(r.path.name == "1" for r in g.runs)]
    assert pruned_group.finished and not pruned_group.completed
    assert group_stats(pruned_group).estimates["final"].n == 0


@pytest.mark.parametrize(
    "bad,message",
    [
        ("optimizer.lr=0.1,0.01", "put search spaces in hydra.sweeper.params, not on the command line"),
        ("hydra.sweeper.params={optimizer.lr:0.1}", "hydra.sweeper.params.optimizer.lr='0.1' is not a search space"),
    ],
)
def test_bad_search_settings_are_one_line(tmp_path, bad, message):
    out = subprocess.run(
        _cmd("-m", "hparams_search=optuna", *TINY, bad, f"out_root={tmp_path}/o"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"famlab: error: {out.stderr.split(': error: ')[1].strip()}"
    ]
    assert message in out.stderr and not (tmp_path / "o").exists()


def test_a_search_whose_every_trial_fails_stops_instead_of_retrying_forever(tmp_path):
    # a _target_ outside the allowlist fails every trial inside its job, after Hydra launched it
    out = subprocess.run(
        _cmd(
            *SEARCH[:-1],
            "hydra.sweeper.n_trials=2",
            "+callbacks.bad._target_=builtins.print",
            f"out_root={tmp_path}",
            "sweep_name=f",
        ),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0 and "2 trials failed and 0 of 2 finished" in out.stderr
    jobs = [p for p in (tmp_path / "train" / "multiruns" / "f").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2
