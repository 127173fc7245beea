"""Grouping by non-seed settings and resolving group specs."""

import pytest
from fake_runs import write_run

from famlab.report.groups import group_runs, matching_groups, parse_override, run_settings
from famlab.report.runs import Run, discover_runs


def test_parse_override_strips_prefixes():
    assert parse_override("++optimizer.lr=0.01") == ("optimizer.lr", "0.01")
    assert parse_override("~model.dropout") is None


def test_groups_drop_seed_and_shared_keys(tmp_path):
    for seed in range(3):
        write_run(tmp_path, f"adam{seed}", "adam", seed)
        write_run(tmp_path, f"fam{seed}", "fam", seed)
    groups = group_runs(discover_runs([tmp_path]))
    assert sorted(g.label for g in groups) == ["optimizer=adam", "optimizer=fam"]
    assert all(len(g.runs) == 3 for g in groups)
    # settings keep everything (for spec matching) although the label shows only what varies
    assert groups[0].settings["position"] == "rotary"


def test_lr_sweep_labels_include_lr(tmp_path):
    for lr in (1e-3, 3e-3):
        for seed in range(2):
            write_run(tmp_path, f"adam_{lr}_{seed}", "adam", seed, lr=lr)
    groups = group_runs(discover_runs([tmp_path]))
    assert sorted(g.label for g in groups) == ["optimizer.lr=0.001", "optimizer.lr=0.003"]
    assert matching_groups("optimizer=adam", groups) == groups  # key of a shared setting matches
    assert [g.label for g in matching_groups("optimizer.lr=3e-3", groups)] == ["optimizer.lr=0.003"]


def test_choices_fallback_when_no_overrides():
    runs = [
        Run(path=f"r{i}", status="completed", overrides=[], choices={"optimizer": o, "hydra/x": "y"})
        for i, o in enumerate(["adam", "fam", "fam"])
    ]
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["optimizer=adam", "optimizer=fam"]
    assert "hydra/x" not in run_settings(runs[0])


def test_runs_without_settings_form_unknown_group():
    runs = [Run(path="a", status="missing"), Run(path="b", status="completed", choices={"m": "x"})]
    labels = [g.label for g in group_runs(runs)]
    assert labels == ["unknown", "all"]


def test_matching_by_label_and_bad_spec(tmp_path):
    write_run(tmp_path, "a", "adam")
    write_run(tmp_path, "f", "fam")
    groups = group_runs(discover_runs([tmp_path]))
    assert [g.label for g in matching_groups("optimizer=fam", groups)] == ["optimizer=fam"]
    assert matching_groups("optimizer=sgd", groups) == []
    with pytest.raises(ValueError, match="key=value"):
        matching_groups("nonsense", groups)


def test_absent_key_is_default_only_when_choices_are_known():
    full = {"optimizer": "adam"}
    runs = [
        Run(path="a", status="completed", overrides=["optimizer=adam"], choices=full),
        Run(path="b", status="completed", overrides=["optimizer=adam", "optimizer.lr=0.01"], choices=full),
        # a running job known only from .hydra/overrides.yaml: missing keys are unknown
        Run(path="c", status="running", overrides=["optimizer=fam"]),
        Run(path="d", status="completed", overrides=["optimizer=fam"], choices={"optimizer": "fam"}),
    ]
    groups = group_runs(runs)
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("optimizer=adam", 1),
        ("optimizer=adam,optimizer.lr=0.01", 1),
        ("optimizer=fam", 2),
    ]


def test_bookkeeping_overrides_do_not_split_groups():
    runs = [
        Run(
            path=str(i),
            status="completed",
            choices={"optimizer": "adam"},
            overrides=[f"out_root=/tmp/{i}", f"sweep_name=s{i}", f"seed={i}", "resume=auto"],
        )
        for i in range(3)
    ]
    groups = group_runs(runs)
    assert [(g.label, len(g.runs)) for g in groups] == [("all", 3)]
