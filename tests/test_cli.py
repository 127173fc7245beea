"""One command line: ``famlab train | evaluate | sample | compare | data``, each with --help and an example;
evaluate and sample are composed by Hydra (config groups, --cfg job)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from famlab import api, cli, evaluate, sample
from famlab.hydra_cli import compose_cli, quote_value
from famlab_testing import REPO, TINY

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _famlab(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "famlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    api.train(api.compose([*TINY, f"out_root={root}"], run_dir=root / "run"))
    return root / "run"


def test_usage_lists_every_subcommand_with_examples(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "sample", "compare", "data"):
        assert f"\n  {name} " in out
    assert "examples:" in out and "famlab train debug=tiny" in out


@pytest.mark.parametrize(
    "name,needles",
    [
        ("evaluate", ["eval=default | quick | long", "context_lengths: null", "Examples:", "famlab evaluate run="]),
        ("sample", ["sampling=default | greedy", "max_new_tokens: 200", "Examples:", "famlab sample run="]),
    ],
)
def test_hydra_subcommand_help_lists_options_and_an_example(name, needles, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([name, "--help"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    for needle in needles:
        assert needle in out, out


def test_train_and_compare_help():
    train = _famlab("train", "--help")
    assert train.returncode == 0 and "optimizer: adam" in train.stdout and "famlab train debug=tiny" in train.stdout
    compare = _famlab("compare", "--help")
    assert compare.returncode == 0 and "--baseline" in compare.stdout and "example:" in compare.stdout


def test_famlab_train_runs_hydra(tmp_path):
    out = _famlab("train", *TINY, f"out_root={tmp_path}", "run_name=t")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((tmp_path / "train/runs/t/summary.json").read_text())["status"] == "completed"


def test_evaluate_takes_config_groups(run_dir, capsys):
    assert cli.main(["evaluate", f"run={run_dir}", "eval=quick", "eval.context_lengths=[16,32]"]) == 0
    report = json.loads((run_dir / "eval_context.json").read_text())
    assert report["batches"] == 2 and report["checkpoint"].endswith("last.ckpt")
    assert list(report["context_lengths"]) == ["16", "32"]
    with pytest.raises(SystemExit, match=r"famlab evaluate: error: .*eval/nope.*default long quick"):
        evaluate.main([f"run={run_dir}", "eval=nope"])


def test_sample_takes_config_groups_and_keeps_the_prompt_verbatim(run_dir, capsys):
    a = sample.main([f"run={run_dir}", "sampling=greedy", "prompt=The it's ", "max_new_tokens=5", "seed=1"])
    b = sample.main([f"run={run_dir}", "sampling=greedy", "prompt=The it's ", "max_new_tokens=5", "seed=2"])
    assert a == b and a.startswith("The it's ") and len(a) == len("The it's ") + 5
    odd = "  a 'b' \\ ${c} \""
    assert compose_cli("sample", [quote_value(f"prompt={odd}", "prompt")], "famlab sample").prompt == odd
    assert cli.main(["sample", f"run={run_dir}", "sampling=greedy", "--cfg", "job"]) == 0
    assert "temperature: 0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown option --bogus"):
        sample.main([f"run={run_dir}", "--bogus"])


def test_data_subcommand_dispatches_or_says_why():
    if importlib.util.find_spec("famlab.data.prepare") is None:
        with pytest.raises(SystemExit, match="famlab data: not available .*famlab.data.prepare"):
            cli.main(["data"])
    else:
        import famlab.data.prepare

        assert cli.resolve("data") is famlab.data.prepare.main
