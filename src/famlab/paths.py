"""Where famlab's config tree lives (``conf/`` at the repository root, or ``$FAMLAB_CONF``)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = Path(os.environ.get("FAMLAB_CONF", REPO_ROOT / "conf")).resolve()
