"""Only allowed ``_target_`` values are ever instantiated: a doctored run directory (or command
line) naming ``builtins.open``, ``pathlib.Path.touch`` or ``logging.FileHandler`` is refused with one
line before anything is called, and the user's files stay as they were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from famlab import allowlist, api
from famlab.build import build_datamodule
from famlab.errors import ConfigError
from famlab_testing import REPO, TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("allow")
    cfg = api.compose(
        [*TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", "run_name=src", f"out_root={root}"],
        run_dir=root / "src",
    )
    assert api.train(cfg)["status"] == "completed"
    return root / "src"


def _doctor(run_dir: Path, dest: Path, edit) -> Path:
    """A copy of ``run_dir`` whose config.yaml was changed by ``edit(dict)``."""
    import shutil

    shutil.copytree(run_dir, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    edit(cfg)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dest


def _snapshot(directory: Path) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _payloads(user: Path) -> dict:
    """The three cases, each as an edit of the config dict and where the payload would write."""
    victim, touched, logged = user / "notes.txt", user / "touched", user / "handler.log"
    return {
        "open": (
            lambda c: c["data"].__setitem__("corpus", {"_target_": "builtins.open", "_args_": [str(victim), "w"]}),
            "data.corpus._target_=builtins.open",
        ),
        "touch": (
            lambda c: c["data"].__setitem__(
                "corpus",
                {"_target_": "pathlib.Path.touch", "self": {"_target_": "pathlib.Path", "_args_": [str(touched)]}},
            ),
            "data.corpus._target_=pathlib.Path.touch",
        ),
        "filehandler": (
            lambda c: c["model"].__setitem__("extra", {"_target_": "logging.FileHandler", "filename": str(logged)}),
            "model.extra._target_=logging.FileHandler",
        ),
        "nested_args": (
            lambda c: c["attention"].__setitem__(
                "helper",
                {
                    "_target_": "famlab.model.transformer.TransformerLM",
                    "_args_": [{"_target_": "builtins.open", "_args_": [str(victim), "w"]}],
                },
            ),
            "attention.helper._args_[0]._target_=builtins.open",
        ),
        "partial": (
            lambda c: c["position"].__setitem__(
                "factory", {"_target_": "logging.FileHandler", "_partial_": True, "filename": str(logged)}
            ),
            "position.factory._target_=logging.FileHandler",
        ),
        "interpolation": (
            lambda c: c["data"].__setitem__(
                "corpus", "${oc.create:'{_target_: builtins.open, _args_: [" + str(victim) + ", w]}'}"
            ),
            "data.corpus._target_=builtins.open",
        ),
        "own_allow_targets": (
            lambda c: (
                c.__setitem__("allow_targets", ["builtins", "pathlib", "logging"]),
                c["data"].__setitem__("corpus", {"_target_": "builtins.open", "_args_": [str(victim), "w"]}),
            ),
            "data.corpus._target_=builtins.open",
        ),
    }


@pytest.mark.parametrize(
    "case", ["open", "touch", "filehandler", "nested_args", "partial", "interpolation", "own_allow_targets"]
)
def test_doctored_run_directory_is_refused_and_nothing_is_written(trained, tmp_path, case):
    user = tmp_path / "home"
    user.mkdir()
    (user / "notes.txt").write_text("the user's notes\n")
    edit, key = _payloads(user)[case]
    doctored = _doctor(trained, tmp_path / "shared_run", edit)
    before_user, before_run = _snapshot(user), _snapshot(doctored)
    with pytest.raises(ConfigError) as err:
        api.load_run(doctored)
    msg = str(err.value)
    assert msg.startswith(f"run={doctored}: config.yaml: {key} is not allowed") and "\n" not in msg
    assert "allow_targets" in msg and "nothing was called" in msg
    assert _snapshot(user) == before_user and (user / "notes.txt").read_text() == "the user's notes\n"
    assert _snapshot(doctored) == before_run


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_sample_and_evaluate_refuse_a_doctored_run_directory(trained, tmp_path, command):
    user = tmp_path / "home"
    user.mkdir()
    (user / "notes.txt").write_text("the user's notes\n")
    doctored = _doctor(trained, tmp_path / "shared_run", _payloads(user)["open"][0])
    before = _snapshot(doctored)
    out = subprocess.run(
        [sys.executable, "-m", "famlab.cli", command, f"run={doctored}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "data.corpus._target_=builtins.open is not allowed" in out.stderr and "Traceback" not in out.stderr
    assert (user / "notes.txt").read_text() == "the user's notes\n"
    assert _snapshot(doctored) == before


def test_command_line_target_is_refused_before_anything_is_written(tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text("keep\n")
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            *TINY,
            f"out_root={tmp_path}",
            "run_name=x",
            "data.corpus._target_=builtins.open",
            f"+data.corpus._args_=[{victim},w]",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("famlab: error: data.corpus._target_=builtins.open is not allowed: famlab instantiates only")
    )
    assert victim.read_text() == "keep\n" and not (tmp_path / "train" / "runs" / "x").exists()


def test_allow_targets_and_environment_extend_the_allowlist(tmp_path, monkeypatch):
    (tmp_path / "mylab_corpus.py").write_text(
        "from famlab.data.corpora import EmbeddedCorpus\n\nclass Corpus(EmbeddedCorpus):\n    name = 'mine'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    mine = ["model=tiny", "data.corpus._target_=mylab_corpus.Corpus"]
    with pytest.raises(ConfigError, match=r"^data.corpus._target_=mylab_corpus.Corpus is not allowed"):
        build_datamodule(api.compose(mine))
    assert build_datamodule(api.compose([*mine, "allow_targets=[mylab_corpus]"])).corpus.name == "mine"
    monkeypatch.setenv(allowlist.ENV_VAR, "other.pkg, mylab_corpus")
    assert build_datamodule(api.compose(mine)).corpus.name == "mine"
    cfg = api.compose(
        [
            *TINY,
            *mine[1:],
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "run_name=mine",
            f"out_root={tmp_path}",
            "allow_targets=[mylab_corpus]",
        ],
        run_dir=tmp_path / "mine",
    )
    monkeypatch.delenv(allowlist.ENV_VAR)
    assert api.train(cfg)["status"] == "completed"
    with pytest.raises(
        ConfigError, match="mylab_corpus.Corpus is not allowed"
    ):  # the run dir's own list is not trusted
        api.load_run(tmp_path / "mine")
    assert api.load_run(tmp_path / "mine", allow=["mylab_corpus"]).datamodule.corpus.name == "mine"
    monkeypatch.setenv(allowlist.ENV_VAR, "mylab_corpus")
    assert api.load_run(tmp_path / "mine").datamodule.corpus.name == "mine"


def test_every_shipped_config_passes_and_the_rules_hold():
    from famlab_testing import options

    for group in ("data", "model", "optimizer", "scheduler", "position", "attention", "trainer", "logger", "launcher"):
        for option in options(group):
            allowlist.check(api.compose([f"{group}={option}"]))
    assert allowlist.allowed("torch.optim.lr_scheduler.LambdaLR") and allowlist.allowed("lightning.pytorch.Trainer")
    for bad in (
        "famlab.lit.summary.write_json",
        "famlab.data.tokenizers.save_tokenizer",
        "torch.save",
        "lightning.pytorch.TrainerX",
        "famlabx.mod",
        "builtins.eval",
        "os.system",
    ):
        assert not allowlist.allowed(bad), bad
    assert allowlist.allowed("builtins.open", extra=["builtins.open"])
    targets = dict(allowlist.targets(OmegaConf.create({"a": [{"_target_": "x.y", "b": {"_target_": "z"}}]})))
    assert targets == {"a[0]._target_": "x.y", "a[0].b._target_": "z"}


def test_target_object_imports_only_allowed_targets_and_calls_nothing(tmp_path):
    from famlab.build import target_object
    from famlab.optim.factories import fam

    assert target_object(OmegaConf.create({"_target_": "famlab.optim.factories.fam", "lr": 1.0}), "optimizer") is fam
    assert target_object(OmegaConf.create({"lr": 1.0}), "optimizer") is None
    marker = tmp_path / "touched"
    with pytest.raises(ConfigError, match=r"^optimizer._target_=pathlib.Path.touch is not allowed"):
        target_object(OmegaConf.create({"_target_": "pathlib.Path.touch", "self": str(marker)}), "optimizer")
    assert not marker.exists()
    with pytest.raises(ConfigError, match=r"^optimizer: ModuleNotFoundError: No module named 'famlab.optim.nope'$"):
        target_object(OmegaConf.create({"_target_": "famlab.optim.nope.fam"}), "optimizer")
