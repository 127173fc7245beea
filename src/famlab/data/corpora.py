"""Text corpora. Each option of ``data.corpus`` is one class with ``documents() -> list[str]``,
``name`` and ``fingerprint`` (sha256 of the text, recorded in the run summary).

* :class:`EmbeddedCorpus` - the English documentation that every CPython carries in
  ``pydoc_data.topics`` (~465k characters): needs no network and no file from outside.
* :class:`TextFiles` - any local UTF-8 text files (paths or glob patterns).
* :class:`HubDataset` - a Hugging Face hub dataset by name; fails within seconds when offline.
"""
from __future__ import annotations

import glob
import hashlib
import os
import socket
import sys
from pathlib import Path

from famlab.errors import ConfigError


def _sha(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
    return h.hexdigest()[:16]


class EmbeddedCorpus:
    """CPython's ``pydoc_data.topics`` help texts, concatenated in sorted topic order."""

    name = "pydoc_topics"

    def documents(self) -> list[str]:
        from pydoc_data.topics import topics

        return ["\n\n".join(topics[k] for k in sorted(topics))]

    @property
    def fingerprint(self) -> str:
        return f"{_sha(self.documents())}-py{sys.version_info.major}.{sys.version_info.minor}"


class TextFiles:
    """Local text files: ``path`` is a file, a directory (all ``*.txt`` inside) or a glob."""

    def __init__(self, path: str | list[str]):
        if path is None or str(path) in ("", "???"):
            raise ConfigError("data.corpus.path is required for data=text_files (a file, directory or glob)")
        self.patterns = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        self.name = "text_files"

    def files(self) -> list[Path]:
        out: list[Path] = []
        for pattern in self.patterns:
            p = Path(os.path.expanduser(str(pattern)))
            if p.is_dir():
                out += sorted(p.glob("*.txt"))
            elif any(ch in str(pattern) for ch in "*?["):
                out += sorted(Path(x) for x in glob.glob(os.path.expanduser(str(pattern))))
            elif p.is_file():
                out.append(p)
            else:
                raise ConfigError(f"data.corpus.path: {p} does not exist")
        if not out:
            raise ConfigError(f"data.corpus.path: no text files match {self.patterns}")
        return out

    def documents(self) -> list[str]:
        docs = []
        for f in self.files():
            raw = f.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigError(f"data.corpus.path: {f} is not UTF-8 text (invalid byte at offset {e.start})") from None
            if not text.strip():
                raise ConfigError(f"data.corpus.path: {f} is empty")
            docs.append(text)
        return docs

    @property
    def fingerprint(self) -> str:
        return _sha(self.documents())


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds (False when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


class HubDataset:
    """A hub dataset by name (e.g. ``karpathy/tiny_shakespeare``, ``Salesforce/wikitext``).

    Offline, a copy already in the local ``datasets`` cache is used; otherwise this raises a
    :class:`ConfigError` within seconds instead of letting the hub client retry for ~25 s.
    """

    def __init__(self, hub_name: str, config: str | None = None, split: str = "train", text_field: str = "text",
                 cache_dir: str | None = None):
        self.hub_name, self.config, self.split, self.text_field = hub_name, config, split, text_field
        self.cache_dir = cache_dir
        self.name = hub_name.replace("/", "_")
        self._docs: list[str] | None = None

    def documents(self) -> list[str]:
        if self._docs is not None:
            return self._docs
        import datasets

        online = hub_reachable()
        if not online:
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["HF_DATASETS_OFFLINE"] = "1"
        try:
            ds = datasets.load_dataset(self.hub_name, self.config, split=self.split, cache_dir=self.cache_dir)
        except Exception as e:  # noqa: BLE001 - any failure becomes one clear line
            why = "the hub is unreachable (offline) and no cached copy exists" if not online else str(e).splitlines()[0]
            raise ConfigError(
                f"data: could not load hub dataset {self.hub_name!r}: {why}; use data=text_files "
                f"data.corpus.path=<your .txt files> or data=embedded offline"
            ) from None
        if self.text_field not in ds.column_names:
            raise ConfigError(f"data.corpus.text_field={self.text_field!r} not in {ds.column_names}")
        self._docs = ["\n".join(ds[self.text_field])]
        return self._docs

    @property
    def fingerprint(self) -> str:
        return _sha(self.documents())
