"""Report table: context-length columns from ``eval.context_lengths``."""

from fake_runs import linear_curve, write_run

from famlab.report.groups import group_runs
from famlab.report.markdown import group_rows
from famlab.report.results import group_stats
from famlab.report.runs import discover_runs


def test_context_length_loss_and_accuracy_columns(tmp_path):
    for seed in range(2):
        write_run(
            tmp_path,
            f"adam{seed}",
            "adam",
            seed,
            curve=linear_curve(2.0),
            eval_contexts={
                "256": {"loss": 2.0 + seed, "bpc": 2.9, "accuracy": 0.5},
                "64": {"loss": 1.5, "bpc": 2.1, "accuracy": None},
            },
        )
        write_run(
            tmp_path,
            f"fam{seed}",
            "fam",
            seed,
            curve=linear_curve(1.8),
            eval_contexts={"64": {"loss": 1.4, "bpc": 2.0, "accuracy": None}},
        )
    stats = [group_stats(g) for g in group_runs(discover_runs([tmp_path]))]
    header, rows = group_rows(stats, target=None)
    assert header[-3:] == ["loss@64", "loss@256", "acc@256"]
    table = {row[0]: dict(zip(header, row)) for row in rows}
    assert table["optimizer=adam"]["loss@64"] == "1.5 ± 0"
    assert table["optimizer=adam"]["loss@256"].startswith("2.5 ± ")
    assert table["optimizer=adam"]["acc@256"] == "0.5 ± 0"
    assert table["optimizer=fam"]["loss@256"] == "—" and table["optimizer=fam"]["acc@256"] == "—"


def test_no_context_columns_without_evals(tmp_path):
    write_run(tmp_path, "a", "adam", 0)
    header, _ = group_rows([group_stats(g) for g in group_runs(discover_runs([tmp_path]))], None)
    assert not any(h.startswith(("loss@", "acc@")) for h in header)
