"""Package layout that pyproject.toml cannot express.

* ``conf/`` stays at the top of the repository and is copied into the wheel as ``famlab/conf`` at
  build time, so a non-editable install (``pip install .``, ``pip install git+<url>``) has its
  config tree. An editable install reads the checkout's ``conf/`` directly (``famlab.paths``), and
  keeps the plain ``src`` path entry that lets Hydra discover famlab's sweeper plugin.
* famlab's Optuna sweeper lives in Hydra's ``hydra_plugins`` namespace package (no ``__init__.py``),
  which ``find_packages`` cannot see: it is listed by name.

Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithConf(build_py):
    """``build_py`` that also copies ``conf/`` (YAML files and the local/ example) into ``famlab/conf``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "famlab" / "conf"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "conf", target, ignore=self._ignore)

    @staticmethod
    def _ignore(directory, names):
        local = Path(directory).name == "local"  # a user's own conf/local/default.yaml stays home
        keep = {".gitkeep", "example.yaml.txt"} if local else None
        return [
            n
            for n in names
            if (keep is not None and n not in keep)
            or (not (Path(directory) / n).is_dir() and not n.endswith(".yaml") and keep is None)
        ]


setup(
    packages=[*find_packages("src"), "hydra_plugins.famlab_optuna_sweeper"],
    package_dir={"": "src"},
    package_data={"famlab": ["py.typed"]},
    include_package_data=False,
    cmdclass={"build_py": BuildWithConf},
)
