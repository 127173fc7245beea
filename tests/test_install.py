"""A non-editable install (a wheel, as ``pip install .`` or ``pip install git+<url>`` builds) carries the
config tree and trains from a directory outside the checkout through the ``famlab-train`` script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from famlab_testing import REPO

SKIP = shutil.ignore_patterns(
    ".git", ".venv", "outputs", "multirun", ".cache", "build", "dist", "*.egg-info", "__pycache__", "wandb", "local"
)


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_checkout(tmp_path):
    src = tmp_path / "src-copy"
    shutil.copytree(REPO, src, ignore=SKIP)
    shutil.copytree(REPO / "conf" / "local", src / "conf" / "local", ignore=shutil.ignore_patterns("*.yaml"))
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("famlab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    # famlab's dependencies come from the test's own environment, read after the fresh venv's site-packages
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(site, "famlab-deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FAMLAB_CONF")}
    where = subprocess.run(
        [
            str(py),
            "-c",
            "import famlab.paths as p; print(p.__file__); print(p.CONF_DIR); "
            "import hydra_plugins.famlab_optuna_sweeper.optuna_sweeper as s; print(s.__file__)",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0].startswith(site) and where[1] == os.path.join(site, "famlab", "conf"), where
    assert where[2].startswith(site), where  # the sweeper plugin is in the wheel
    assert os.path.isfile(os.path.join(site, "famlab", "py.typed"))  # typed package (PEP 561)
    out = subprocess.run(
        [
            str(venv / "bin" / "famlab-train"),
            "debug=tiny",
            "out_root=runs",
            "run_name=w",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((elsewhere / "runs/train/runs/w/summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert not (src / "runs").exists() and not (REPO / "runs").exists()


@pytest.mark.slow
def test_editable_install_finds_the_checkout_conf_and_the_sweeper_plugin(tmp_path):
    src = tmp_path / "src-copy"
    shutil.copytree(REPO, src, ignore=SKIP)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(site, "famlab-deps.pth"), "w") as f:  # setuptools and famlab's dependencies
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-e",
            str(src),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FAMLAB_CONF")}
    code = (
        "import famlab.paths as p; print(p.CONF_DIR); from hydra.core.plugins import Plugins; "
        "from hydra.plugins.sweeper import Sweeper; print([c.__name__ for c in Plugins.instance().discover(Sweeper)])"
    )
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    conf, sweepers = out.stdout.splitlines()
    assert conf == str(src / "conf") and "FamlabOptunaSweeper" in sweepers
