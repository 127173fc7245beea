"""End-to-end ``famlab compare`` on fake sweeps, the ``famlab`` dispatcher, and the no-torch rule."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "report"))
from fake_runs import linear_curve, write_run  # noqa: E402

from famlab import cli  # noqa: E402
from famlab.compare import compare, main  # noqa: E402
from famlab.report.stats import mean_ci, welch_t_test  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ADAM, FAM = [2.0, 2.1, 1.9], [1.6, 1.7, 2.5]
RULE = {
    "claim": "FAM reaches the target in fewer steps than Adam",
    "method": "optimizer=fam",
    "baseline": "optimizer=adam",
    "metric": "steps_to_target",
    "direction": "lower",
    "min_effect": 0.15,
}


def make_sweep(root: Path) -> Path:
    sweep = root / "multirun" / "exp"
    meta = {"verdict": RULE, "baseline": "optimizer=adam", "target": 2.3}
    for seed, end in enumerate(ADAM):
        write_run(sweep, str(seed), "adam", seed, curve=linear_curve(end), meta=meta, target=2.3)
    for seed, end in enumerate(FAM):
        write_run(sweep, str(3 + seed), "fam", seed, curve=linear_curve(end), meta=meta, target=2.3, tokens_per_s=900.0)
    write_run(sweep, "6", "fam", 3, status="failed", error="RuntimeError: loss is NaN", meta=meta)
    write_run(sweep, "7", "fam", 4, status=None, meta=meta)  # still running
    task = ["optimizer=adam,fam", "seed=0,1,2,3,4"]  # 10 jobs expected; 8 and 9 never started
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    return sweep


def test_compare_end_to_end(tmp_path):
    sweep = make_sweep(tmp_path)
    data = compare([sweep])  # baseline, target and verdict rule all come from the configs
    out = sweep / "report"
    md = (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    groups = {g["label"]: g for g in saved["groups"]}
    assert set(groups) >= {"optimizer=adam", "optimizer=fam"}
    fam = groups["optimizer=fam"]
    expected = mean_ci(FAM)
    assert fam["estimates"]["final"]["mean"] == pytest.approx(expected.mean)
    assert fam["estimates"]["final"]["ci_low"] == pytest.approx(expected.lo)
    assert fam["statuses"] == {"completed": 3, "failed": 1, "running": 1}
    assert (fam["target_reached"], fam["target_decided"]) == (2, 3)
    ratio = fam["ratios_vs_baseline"]["final"]
    assert ratio["ratio"] == pytest.approx(sum(FAM) / sum(ADAM))
    assert ratio["p"] == pytest.approx(welch_t_test(FAM, ADAM).p)
    assert saved["target"] == {"value": 2.3, "source": "summary.json target"}
    assert saved["baseline"]["label"] == "optimizer=adam"
    # problems are listed with their errors, nothing silently dropped
    statuses = {Path(r["path"]).name: r["status"] for r in saved["runs"]}
    assert statuses["6"] == "failed" and statuses["7"] == "running"
    assert statuses["8"] == statuses["9"] == "missing"
    assert "RuntimeError: loss is NaN" in md and "not reached (1/3)" in md
    assert "## Verdicts" in md and "FAM reaches the target in fewer steps than Adam" in md
    # fam needs 400, 400 and (never, censored at its 500-step budget) vs adam's 500, 500, 500
    verdict = saved["verdicts"][0]
    assert verdict["verdict"] == "inconclusive"
    assert verdict["comparisons"]["baseline"]["improvement"] == pytest.approx(1 - (1300 / 3) / 500)
    assert any("1/3 method run(s) never reached" in r for r in verdict["reasons"])
    assert "scale: 12.3k parameters" in md
    for rel in saved["plots"].values():
        assert f"]({rel})" in md and (out / rel).stat().st_size > 1000
    assert data["report_md"] == str(out / "report.md")


def test_cli_overrides_and_explicit_run_dirs(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    out = tmp_path / "out"
    rule = json.dumps({**RULE, "metric": "best_val_loss", "claim": "custom claim"})
    runs = [str(sweep / str(i)) for i in range(6)]
    code = main(
        [*runs, "--baseline", "optimizer=fam", "--target", "2.0", "--out", str(out), "--verdict", rule, "--no-plots"]
    )
    assert code == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["target"] == {"value": 2.0, "source": "--target"}
    assert saved["baseline"]["label"] == "optimizer=fam"
    assert [v["rule"]["claim"] for v in saved["verdicts"]] == ["custom claim"]
    assert saved["plots"] == {}
    printed = capsys.readouterr().out
    assert "optimizer=adam" in printed and "custom claim" in printed


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main([str(tmp_path), "--no-plots"]) == 2
    assert "no run directories" in capsys.readouterr().err
    make_sweep(tmp_path)
    assert main([str(tmp_path), "--verdict", "{broken", "--no-plots"]) == 2
    assert main([str(tmp_path), "--verdict", '{"method": "optimizer=fam"}', "--no-plots"]) == 2
    assert "'baseline'" in capsys.readouterr().err


def test_famlab_dispatcher(tmp_path, monkeypatch, capsys):
    sweep = make_sweep(tmp_path)
    assert cli.main(["compare", str(sweep), "--no-plots", "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()
    assert set(cli.SUBCOMMANDS) >= {"compare", "evaluate", "sample"}
    assert cli.SUBCOMMANDS["evaluate"] == "famlab.evaluate:main"
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", "famlab.no_such_module:main")
    with pytest.raises(SystemExit, match="not available"):
        cli.main(["ghost"])
    with pytest.raises(SystemExit, match="unknown subcommand"):
        cli.main(["bogus"])
    assert cli.main([]) == 2 and "compare" in capsys.readouterr().out


def test_module_entry_point_never_imports_torch(tmp_path):
    sweep = make_sweep(tmp_path)
    code = (
        "import runpy, sys; sys.argv = ['famlab.compare', sys.argv[1], '--no-plots'];"
        "import famlab.compare as c; rc = c.main();"
        "assert 'torch' not in sys.modules and 'famlab.model' not in sys.modules; sys.exit(rc)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "famlab.compare", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0 and "--baseline" in proc.stdout


def test_long_inline_verdict_is_json_not_a_path(tmp_path, capsys):
    # an inline rule longer than 255 characters made Path(...).is_file() raise OSError
    sweep = make_sweep(tmp_path)
    rule = {**RULE, "claim": "FAM reaches the target in fewer steps than Adam " + "x" * 300}
    text = json.dumps(rule)
    assert len(text) > 255
    assert main([str(sweep), "--verdict", text, "--no-plots", "--out", str(tmp_path / "r")]) == 0
    assert ("x" * 300) in (tmp_path / "r" / "report.md").read_text()
    assert "famlab compare: error" not in capsys.readouterr().err
    from famlab.compare import load_verdict_rules

    assert load_verdict_rules([text])[0]["claim"] == rule["claim"]
    assert load_verdict_rules(["  " + json.dumps([rule, rule])])[1]["metric"] == "steps_to_target"
