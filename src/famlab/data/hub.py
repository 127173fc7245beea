"""Hugging Face hub access that fails within seconds when there is no network.

``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, when it is imported, and otherwise retries a
failing request five times (about 24 s). :func:`decide_offline` probes the hub endpoint with one
TCP connection (at most ``timeout`` seconds), and when it is unreachable switches both the
environment and the already-imported libraries' module constants to offline mode, so that
``datasets.load_dataset`` and ``hf_hub_download`` answer from the local cache or fail at once.
Call it before every hub access; the answer is computed once per process.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

from famlab.errors import ConfigError

_TRUE = ("1", "true", "yes", "on")
_decided: bool | None = None


def _env_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint (``$HF_ENDPOINT``, default huggingface.co) accepts a TCP connection
    within ``timeout`` seconds; False when offline mode is set in the environment."""
    if _env_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "huggingface_hub" in sys.modules:  # imported already: its constant was read at import time
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True


def decide_offline(timeout: float = 3.0) -> bool:
    """True when the hub cannot be used; then every hub library in this process is in offline mode."""
    global _decided
    if _decided is None:
        _decided = not hub_reachable(timeout)
    if _decided:
        _set_offline()
    return _decided


def load_hub_dataset(
    hub_name: str,
    config: str | None,
    split: str,
    streaming: bool = False,
    revision: str | None = None,
    cache_dir: str | None = None,
):
    """``datasets.load_dataset`` after :func:`decide_offline`; any failure is one ConfigError line."""
    offline = decide_offline()
    import datasets

    try:
        return datasets.load_dataset(
            hub_name,
            config,
            split=split,
            streaming=streaming,
            revision=revision,
            cache_dir=os.path.expanduser(cache_dir) if cache_dir else None,
        )
    except Exception as e:  # noqa: BLE001 - any failure becomes one clear line
        why = _failure(e, offline)
        raise ConfigError(
            f"data: could not load hub dataset {hub_name!r}: {why}; use data=text_files "
            f"data.corpus.path=<your .txt files>, data=stdlib or data=embedded offline"
        ) from None


def _failure(error: Exception, offline: bool) -> str:
    """Why a hub load failed, as the middle of a one-line error."""
    if offline:
        return "the hub is unreachable (offline) and no cached copy exists"
    return (str(error).splitlines() or [type(error).__name__])[0]


def hub_file(repo_id: str, filename: str, key: str) -> str:
    """Local path of ``filename`` from hub model repo ``repo_id`` (downloaded or cached)."""
    offline = decide_offline()
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # noqa: BLE001
        why = _failure(e, offline)
        raise ConfigError(
            f"{key}={repo_id!r}: could not load {filename} from the hub: {why}; "
            f"use data.tokenizer.kind=bytes|chars|bpe, or {key}=<path to a tokenizer.json>"
        ) from None
