"""Per-run values, per-group estimates and baseline ratios from fake run dirs with known numbers."""

import json
import math

import pytest
from fake_runs import linear_curve, write_run

from famlab.report.groups import group_runs
from famlab.report.results import add_ratios, describe_scale, group_stats, run_result, scale_line
from famlab.report.runs import discover_runs, load_run
from famlab.report.stats import mean_ci, welch_t_test


def test_run_result_values_and_target(tmp_path):
    run = load_run(
        write_run(
            tmp_path,
            "r",
            curve=[(100, 3.0), (200, 2.4), (300, 2.6)],
            seconds_per_step=0.5,
            tokens_per_s=800.0,
            optimizer_ms=4.0,
        )
    )
    res = run_result(run, target=2.5)
    assert (res.final, res.best) == (2.6, 2.4)
    assert res.steps_to_target == 200 and res.reached is True
    assert res.time_to_target == pytest.approx(100.0)  # elapsed_s on the same step's train row
    assert (res.grid_steps, res.grid_time) == (100, pytest.approx(50.0))  # crossing in (100, 200]
    assert (res.tokens_per_s, res.optimizer_ms) == (800.0, 4.0)
    missed = run_result(run, target=1.0)
    assert missed.reached is False and missed.steps_to_target is None
    assert missed.value("steps_to_target", censored=True) == 300  # budget = last step
    assert missed.value("time_to_target", censored=True) == pytest.approx(150.0)


def test_other_metric_and_maximize_come_from_curve(tmp_path):
    run = load_run(write_run(tmp_path, "r", curve=[(100, 3.0), (200, 2.0), (300, 2.5)]))
    res = run_result(run, metric="train/loss", target=2.2)
    assert res.final == pytest.approx(2.6) and res.best == pytest.approx(2.1)
    assert res.steps_to_target == 200
    up = run_result(run, metric="val/loss", target=2.9, maximize=True)
    assert up.steps_to_target == 100


def test_summary_target_used_without_curve(tmp_path):
    run = load_run(write_run(tmp_path, "r", metrics=False, target=2.5))
    assert run_result(run, target=2.5).steps_to_target == 200
    assert run_result(run, target=2.0).reached is None  # other target: cannot decide


def test_eval_context_lengths(tmp_path):
    run = load_run(
        write_run(
            tmp_path, "r", eval_contexts={"64": {"loss": 2.0, "accuracy": 0.5}, "256": {"loss": 2.7, "accuracy": None}}
        )
    )
    res = run_result(run)
    assert res.eval_loss == {64: 2.0, 256: 2.7} and res.eval_accuracy == {64: 0.5}
    assert res.value("eval_loss@256") == 2.7
    with pytest.raises(ValueError, match="unknown metric"):
        res.value("bogus")


def _sweep(tmp_path):
    ends = {"adam": [2.0, 2.1, 1.9], "fam": [2.2, 2.35, 2.6]}
    for opt, values in ends.items():
        for seed, end in enumerate(values):
            write_run(
                tmp_path,
                f"{opt}{seed}",
                opt,
                seed,
                curve=linear_curve(end),
                tokens_per_s=1000.0 + 10 * seed + (100 if opt == "fam" else 0),
            )
    write_run(tmp_path, "fam_failed", "fam", 7, status="failed", error="boom")
    write_run(tmp_path, "fam_div", "fam", 8, status="diverged", curve=[(100, 3.9), (200, float("nan"))])
    return ends, group_runs(discover_runs([tmp_path]))


def test_group_stats_and_not_reached_counts(tmp_path):
    ends, groups = _sweep(tmp_path)
    stats = {g.label: group_stats(g, target=2.3) for g in groups}
    fam, adam = stats["optimizer=fam"], stats["optimizer=adam"]
    expected = mean_ci(ends["fam"])
    assert fam.estimates["final"].mean == pytest.approx(expected.mean)
    assert fam.estimates["final"].lo == pytest.approx(expected.lo)
    assert fam.estimates["final"].n == 3  # failed and diverged runs are not in the loss stats
    # target 2.3: adam reached in all 3, fam in 1 of 3 completed + the diverged run never
    assert (adam.reached, adam.decided) == (3, 3)
    assert (fam.reached, fam.decided) == (1, 4)
    # linear curve from 4.0 to 2.2 over 5 evals crosses 2.3 at the 5th (step 500)
    assert fam.estimates["steps_to_target"].mean == 500 and fam.estimates["steps_to_target"].n == 1
    add_ratios(list(stats.values()), adam)
    ratio = fam.ratios["final"]
    assert ratio["ratio"] == pytest.approx(sum(ends["fam"]) / sum(ends["adam"]))
    assert ratio["p"] == pytest.approx(welch_t_test(ends["fam"], ends["adam"]).p)
    assert adam.ratios["final"]["ratio"] == 1.0


def test_scale_description(tmp_path):
    _, groups = _sweep(tmp_path)
    runs = [r for g in groups for r in g.runs]
    scale = describe_scale(runs)
    assert scale["n_parameters"] == [12345] and scale["runs"] == 8 and scale["finished_runs"] == 7
    assert scale_line(scale) == "scale: 12.3k parameters, 64k tokens/run, cpu-test, 7/8 runs finished"
    assert not math.isnan(group_stats(groups[0]).estimates["tokens_per_s"].mean)


def test_val_row_elapsed_preferred_and_val_history_fallback(tmp_path):
    run_dir = write_run(tmp_path, "r", curve=[(100, 3.0), (200, 2.0)])
    (run_dir / "metrics.csv").write_text(
        "step,train/loss,val/loss,perf/elapsed_s,perf/tokens_per_s\n"
        "100,3.1,,10.0,500\n100,,3.0,11.5,\n200,2.1,,20.0,900\n200,,2.0,21.5,\n200,,,,1000\n"
    )
    res = run_result(load_run(run_dir), target=2.5)
    assert res.steps_to_target == 200 and res.time_to_target == 21.5  # the val row's own time
    # no metrics.csv: the summary's val_history (written by the RunRecorder) is the curve
    (run_dir / "metrics.csv").unlink()
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["val_history"] = [
        {"step": 100, "val_loss": 2.8, "elapsed_s": 9.0},
        {"step": 200, "val_loss": 2.4, "elapsed_s": 19.0},
    ]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    res = run_result(load_run(run_dir), target=2.5)
    assert (res.steps_to_target, res.time_to_target) == (200, 19.0)


def test_perf_fallback_is_median_of_logged_values(tmp_path):
    run_dir = write_run(tmp_path, "r", status=None)
    (run_dir / "metrics.csv").write_text(
        "step,perf/tokens_per_s,perf/optimizer_ms\n10,100,9\n20,900,2\n30,1000,3\n40,1100,4\n"
    )
    res = run_result(load_run(run_dir))
    assert (res.tokens_per_s, res.optimizer_ms) == (950.0, 3.5)


def test_interrupted_runs_are_not_in_statistics(tmp_path):
    write_run(tmp_path, "a", seed=0)
    write_run(tmp_path, "b", seed=1, status="interrupted")
    (group,) = group_runs(discover_runs([tmp_path]))
    assert group_stats(group).estimates["final"].n == 1
    assert sorted(r.status for r in group.runs) == ["completed", "interrupted"]
