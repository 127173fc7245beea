"""docs/extending.md's walk-throughs run as written.

For each ``## `` section of the document that has runnable blocks, a copy of the repository
(``src/famlab``, ``conf``, ``tests``, ``train.py``, ``pyproject.toml``) is made in a temporary directory;
every fenced block of the document whose info string carries ``file=PATH`` is written to ``PATH``
there (a later section may use an earlier one's option), then every command of the section's
``bash test`` blocks runs there through bash, with ``python``, ``pytest`` and ``famlab``
resolving to this interpreter and the copy's ``src`` on ``PYTHONPATH``. A command's trailing
``# exit N: TEXT`` gives the exit status and output it must give, ``# prints: TEXT`` text its output
must contain; any other command must exit 0. Training commands get ``threads=1`` (and a sweep
``-m`` the settings of ``debug=tiny`` and one seed), so the documented runs take seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from famlab_testing import REPO

DOC = REPO / "docs" / "extending.md"
FENCE = re.compile(r"^```(\S*)([^\n]*)\n(.*?)^```\s*$", re.M | re.S)
EXPECT = re.compile(r"\s+#\s*(exit (\d+)|prints):\s*(.*)$")
# appended to every `python train.py` command: one thread on a shared machine; a sweep at the
# size of debug=tiny with one seed (the documented sweep runs 2 arms x 2 seeds x 100 steps)
TRAIN_EXTRA = ["threads=1"]
SWEEP_EXTRA = [
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "data.batch_size=4",
    "data.val_batches=2",
    "scheduler.warmup_steps=2",
    "hydra.sweeper.params.seed=0",
]
WALKED = {"Add an attention variant", "Add an optimizer"}  # the walk-throughs the document must keep


def sections() -> dict[str, dict]:
    """``{heading: {"files": {path: text}, "commands": [(command, expected_rc, expected_text)]}}``."""
    out: dict[str, dict] = {}
    for part in re.split(r"^## ", DOC.read_text(), flags=re.M)[1:]:
        heading, body = part.split("\n", 1)
        files, commands = {}, []
        for lang, info, text in FENCE.findall(body):
            target = re.search(r"\bfile=(\S+)", info)
            if target:
                files[target.group(1)] = text
            elif lang == "bash" and info.split() == ["test"]:
                for line in filter(None, (ln.strip() for ln in text.splitlines())):
                    m = EXPECT.search(line)
                    command = line[: m.start()] if m else line
                    rc = int(m.group(2)) if m and m.group(2) else 0
                    commands.append((command, rc, m.group(3).strip() if m else None))
        if commands:
            out[heading.strip()] = {"files": files, "commands": commands}
    return out


SECTIONS = sections()


def test_the_walk_throughs_are_runnable_blocks():
    assert WALKED <= set(SECTIONS), f"sections with `bash test` blocks: {sorted(SECTIONS)}"
    for name in WALKED:
        assert SECTIONS[name]["files"], f"{name}: no ```lang file=PATH block"
        assert any(c.startswith("python train.py") for c, _, _ in SECTIONS[name]["commands"]), name


def _copy_repository(root: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "src" / "famlab", root / "src" / "famlab", ignore=ignore)
    shutil.copytree(REPO / "tests", root / "tests", ignore=ignore)

    def machine_settings(directory, names):  # conf/local/default.yaml: this machine's, not the document's
        return ["default.yaml"] if Path(directory).name == "local" else []

    shutil.copytree(REPO / "conf", root / "conf", ignore=machine_settings)
    for name in ("train.py", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)


def _bin(root: Path) -> Path:
    """``python``, ``pytest`` and ``famlab`` for bash: this interpreter, whatever PATH holds."""
    bindir = root / ".bin"
    bindir.mkdir()
    scripts = {
        "python": f'exec {sys.executable} "$@"',
        "pytest": f'exec {sys.executable} -m pytest "$@"',
        "famlab": f'exec {sys.executable} -m famlab.cli "$@"',
    }
    for name, body in scripts.items():
        (bindir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bindir / name).chmod(0o755)
    return bindir


def _with_extras(command: str) -> str:
    """``threads=1`` right after ``python train.py`` (before any ``--cfg``); a sweep's settings last, to win."""
    prefix = "python train.py"
    if not command.startswith(prefix):
        return command
    rest = command[len(prefix) :]
    if rest.split()[:1] == ["-m"]:
        return f"{command} {' '.join(TRAIN_EXTRA + SWEEP_EXTRA)}"
    return f"{prefix} {' '.join(TRAIN_EXTRA)}{rest}"


@pytest.mark.slow
@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_walk_through_runs(section, tmp_path):
    root = tmp_path / "repo"
    _copy_repository(root)
    spec = SECTIONS[section]
    files = {path: text for other in SECTIONS.values() for path, text in other["files"].items()}
    for path, text in files.items():  # every section's: a later one may use an earlier one's option
        target = root / path
        assert not target.exists(), f"{path} exists already: the walk-through must add a new option"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("FAMLAB_CONF", "PYTHONPATH")}
    env.update(PYTHONPATH=str(root / "src"), PATH=f"{_bin(root)}{os.pathsep}{env.get('PATH', '')}")
    env.setdefault("FAMLAB_CACHE", str(tmp_path / "cache"))
    for command, rc, text in spec["commands"]:
        run = subprocess.run(
            ["bash", "-c", _with_extras(command)], cwd=root, env=env, capture_output=True, text=True, timeout=900
        )
        output = run.stdout + run.stderr
        assert run.returncode == rc, f"{command!r} exited {run.returncode}, not {rc}:\n{output[-3000:]}"
        if text:
            assert text in output, f"{command!r} did not print {text!r}:\n{output[-3000:]}"
