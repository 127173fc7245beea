"""Pytest fixtures shared by the whole suite; plain helpers live in ``famlab_testing``."""
from __future__ import annotations

from pathlib import Path

import pytest

import famlab_testing  # noqa: F401  - sets the offline environment before anything else imports wandb


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A generated UTF-8 corpus (no third-party text): numbered sentences about counting."""
    words = ["alpha", "beta", "gamma", "delta", "rotary", "momentum", "span", "layer"]
    lines = [f"line {i}: {words[i % 8]} follows {words[(i * 3) % 8]} and {words[(i * 5) % 8]}." for i in range(3000)]
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(lines), encoding="utf-8")
    return p
