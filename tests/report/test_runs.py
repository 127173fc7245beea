"""Run discovery and loading: statuses, sparse metrics, Hydra sweep manifests."""

import yaml
from fake_runs import write_run

from famlab.report.runs import MetricsTable, discover_runs, load_run


def test_discovers_runs_at_any_depth_and_skips_hydra_dirs(tmp_path):
    write_run(tmp_path / "a" / "b", "r1")
    write_run(tmp_path / "c", "r2", seed=1)
    (tmp_path / "c" / "r2" / "checkpoints").mkdir()
    runs = discover_runs([tmp_path])
    assert sorted(r.path.name for r in runs) == ["r1", "r2"]  # no '.hydra' pseudo-runs
    assert all(r.status == "completed" for r in runs)


def test_explicit_run_dirs_and_duplicates(tmp_path):
    run = write_run(tmp_path, "r1")
    runs = discover_runs([run, run, tmp_path])
    assert [r.path.name for r in runs] == ["r1"]


def test_statuses_failed_running_missing_corrupt(tmp_path):
    write_run(tmp_path, "failed", status="failed", error="CUDA OOM")
    write_run(tmp_path, "running", status=None)
    write_run(tmp_path, "missing", status=None, metrics=False)
    corrupt = write_run(tmp_path, "corrupt")
    (corrupt / "summary.json").write_text("{not json")
    runs = {r.path.name: r for r in discover_runs([tmp_path])}
    assert runs["failed"].status == "failed" and runs["failed"].error == "CUDA OOM"
    assert runs["running"].status == "running" and "summary.json" in runs["running"].error
    assert runs["missing"].status == "missing"
    assert runs["corrupt"].status == "failed" and "unreadable" in runs["corrupt"].error
    # runs without a summary still know their overrides from .hydra/overrides.yaml
    assert "optimizer=adam" in runs["running"].overrides


def test_nonexistent_path_is_reported_not_raised(tmp_path):
    runs = discover_runs([tmp_path / "nope"])
    assert len(runs) == 1 and runs[0].status == "missing"


def test_multirun_manifest_yields_missing_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    for num in (0, 2):
        write_run(sweep, str(num), seed=num)
    manifest = {"hydra": {"overrides": {"task": ["optimizer=adam,fam", "seed=range(0,2)"]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(manifest))
    runs = discover_runs([sweep])
    missing = sorted(r.path.name for r in runs if r.status == "missing")
    assert missing == ["1", "3"]  # 2 x 2 jobs expected, 0 and 2 present


def test_metrics_table_sparse_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss,val/loss,perf/elapsed_s\n10,2.0,,1.5\n10,,1.9,\n20,1.8,,3.0\n20,,1.7,\n20,,,\n")
    table = MetricsTable.read(path)
    val = table.series("val/loss")
    assert (val.steps, val.values) == ([10.0, 20.0], [1.9, 1.7])
    assert table.series("perf/elapsed_s").values == [1.5, 3.0]
    assert table.series("absent").values == []
    assert table.last_step == 20.0


def test_load_run_reads_summary_config_and_lr(tmp_path):
    run = load_run(
        write_run(tmp_path, "r", optimizer="fam", seed=3, lr=0.003, meta={"baseline": "optimizer=adam", "target": 2.0})
    )
    assert run.seed == 3 and run.lr == 0.003
    assert run.choices["optimizer"] == "fam"
    assert run.experiment_meta["baseline"] == "optimizer=adam"
    assert run.metrics is not None and run.metrics.series("val/loss").values[-1] == 2.2


def test_manifest_with_named_job_dirs_reports_nothing_missing(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "optimizer=adam", seed=0)
    manifest = {
        "hydra": {"sweep": {"subdir": "${hydra.job.override_dirname}"}, "overrides": {"task": ["optimizer=adam,fam"]}}
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(manifest))
    assert [r.status for r in discover_runs([sweep])] == ["completed"]


def test_sweeper_params_count_towards_expected_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, "0")
    manifest = {"hydra": {"overrides": {"task": ["seed=1,2"]}, "sweeper": {"params": {"optimizer": "adam,fam,sgd"}}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(manifest))
    assert sum(r.status == "missing" for r in discover_runs([sweep])) == 5


def test_command_line_sweep_replaces_config_axis_of_same_key(tmp_path):
    # multirun.yaml of a sweep whose config sets 3 lrs x 2 seeds x 2 optimizers while the command
    # line re-sweeps lr (2 values) and seed (3): Hydra runs 2 x 3 x 2 = 12 jobs, not 3*2*2*3*2 = 72
    sweep = tmp_path / "sweep"
    for num in range(10):
        write_run(sweep, str(num), seed=num)
    manifest = {
        "hydra": {
            "overrides": {"task": ["optimizer.lr=1e-3,3e-3", "seed=0,1,2", "+model.dims=8,16"]},
            "sweeper": {
                "params": {
                    "optimizer.lr": "1e-4,1e-3,3e-3",
                    "seed": "0,1",
                    "optimizer": "adam,fam",
                    "model.dims": "8,16,32",
                }
            },
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(manifest))
    missing = sorted(int(r.path.name) for r in discover_runs([sweep]) if r.status == "missing")
    assert missing == list(range(10, 24))  # 2 lr x 3 seeds x 2 optimizers x 2 dims = 24 expected
