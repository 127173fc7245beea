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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skip them, with a reason, where torch sees no GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run by `make gpu-check` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
