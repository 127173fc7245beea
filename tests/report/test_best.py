"""``famlab compare --emit-best``: each arm's best lr, its grid, the grid-edge flag and the target
from the median of the target arm's seeds, on fake stage-1 sweeps."""

from __future__ import annotations

import statistics

import pytest
import yaml
from fake_runs import linear_curve, write_run

from famlab.compare import compare, main
from famlab.report.best import edge_lines

ADAMW = {1e-3: [2.4, 2.5, 2.45], 3e-3: [2.0, 2.1, 2.05], 1e-2: [2.2, 2.3, 2.25]}  # seeds 0, 1, 2
FAM = {0.1: 2.9, 0.3: 2.7, 1.0: 2.5}  # winner at the top of its grid
SGD = {0.03: 2.8, 0.1: 2.6, 0.3: None}  # lr 0.3 diverged: the winner 0.1 is bracketed


def fake_stage1(root):
    sweep = root / "lr"
    job = 0
    for lr, ends in ADAMW.items():
        for seed, end in enumerate(ends):
            write_run(sweep, str(job), "adamw", seed, lr=lr, curve=linear_curve(end))
            job += 1
    for arm, grid in (("fam", FAM), ("sgd", SGD)):
        for lr, end in grid.items():
            status = "completed" if end is not None else "diverged"
            write_run(sweep, str(job), arm, 0, lr=lr, curve=linear_curve(end or 9.0), status=status)
            job += 1
    return sweep


def test_emit_best_winners_grids_edges_and_target(tmp_path):
    sweep = fake_stage1(tmp_path)
    out = tmp_path / "best.yaml"
    data = compare([sweep], out=tmp_path / "rep", plots=False, emit_best=out, tuning={"target_arm": "adamw"})
    best = yaml.safe_load(out.read_text())
    assert best["arm_key"] == "optimizer" and best["by"] == "final_val_loss"
    adamw, fam, sgd = best["arms"]["adamw"], best["arms"]["fam"], best["arms"]["sgd"]
    assert adamw["lr"] == 3e-3 and adamw["grid"] == [1e-3, 3e-3, 1e-2] and adamw["at_edge"] is False
    assert adamw["n"] == 3 and adamw["value"] == pytest.approx(statistics.mean(ADAMW[3e-3]))
    assert (fam["lr"], fam["at_edge"], fam["edge"]) == (1.0, True, "high")
    assert sgd["grid"] == [0.03, 0.1, 0.3] and (sgd["lr"], sgd["at_edge"]) == (0.1, False)
    # target: median over adamw's 3 seeds at lr 3e-3 of val/loss at the first eval >= 80% of 500 steps
    at_400 = [4.0 + (end - 4.0) * 4 / 5 for end in ADAMW[3e-3]]
    assert best["target"]["value"] == pytest.approx(round(statistics.median(at_400), 4))
    assert best["target"]["steps"] == [400, 400, 400] and best["target"]["n"] == 3
    assert best["target"]["arm"] == "adamw" and best["target"]["lr"] == 3e-3
    assert edge_lines(best) == [
        "optimizer=fam: best lr 1 is the highest point of its grid [0.1, 0.3, 1]; widen the grid and rerun that arm"
    ]
    assert data["best"]["edges"] == edge_lines(best)


def test_emit_best_without_enough_target_seeds_names_them(tmp_path):
    sweep = tmp_path / "lr"
    for job, lr in enumerate((1e-3, 3e-3, 1e-2)):
        write_run(sweep, str(job), "adamw", 0, lr=lr, curve=linear_curve({3e-3: 2.0}.get(lr, 2.5)))
    out = tmp_path / "best.yaml"
    compare([sweep], out=tmp_path / "rep", plots=False, emit_best=out, tuning={"target_arm": "adamw"})
    best = yaml.safe_load(out.read_text())
    assert best["target"] is None
    assert best["target_note"] == "the target needs >= 3 completed seeds of adamw at its best lr 0.003; stage 1 has 1"


def test_emit_best_options_from_experiment_meta_and_cli(tmp_path, capsys):
    sweep = tmp_path / "lr"
    meta = {"tuning": {"arm": "optimizer", "target_arm": "adamw", "min_seeds": 1, "fraction": 1.0}}
    for job, (lr, end) in enumerate(((1e-3, 2.5), (3e-3, 2.0))):
        write_run(sweep, str(job), "adamw", 0, lr=lr, curve=linear_curve(end), meta=meta)
    out = tmp_path / "best.yaml"
    assert main([str(sweep), "--out", str(tmp_path / "rep"), "--no-plots", "--emit-best", str(out)]) == 0
    best = yaml.safe_load(out.read_text())
    assert best["target"]["value"] == 2.0 and best["target"]["steps"] == [500]
    assert best["arms"]["adamw"]["edge"] == "high"
    printed = capsys.readouterr().out
    assert "grid edge" in printed and "optimizer=adamw: best lr 0.003 is the highest point" in printed
    assert (
        main([str(sweep), "--out", str(tmp_path / "rep"), "--no-plots", "--emit-best", str(out), "--arm", "handling"])
        == 2
    )
    assert "no group has the arm setting 'handling'" in capsys.readouterr().err
