"""Where famlab's config tree lives.

In order: ``$FAMLAB_CONF``; the ``conf/`` of the checkout this module runs from (``pip install -e``
or ``PYTHONPATH=src``); the copy shipped inside the installed package (``famlab/conf``, what a
``pip install .`` or ``pip install git+<url>`` wheel contains). Add your own groups without
editing either with Hydra's search path (``hydra.searchpath=[file:///my/conf]``).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
PACKAGED_CONF = PACKAGE_DIR / "conf"


def find_conf_dir() -> Path:
    """The config directory famlab composes from (see the module docstring for the order)."""
    if os.environ.get("FAMLAB_CONF"):
        return Path(os.environ["FAMLAB_CONF"]).expanduser().resolve()
    checkout = REPO_ROOT / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    return PACKAGED_CONF


CONF_DIR = find_conf_dir()
