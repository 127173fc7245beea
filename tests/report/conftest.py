"""Make the fake run-directory writer importable as ``fake_runs`` from the report tests."""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
