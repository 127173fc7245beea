"""Local text corpora. Every corpus streams its text and is never joined into one string:

* ``documents()`` yields text pieces in corpus order (a long file arrives as pieces cut after a
  line break, about 1 MiB each; pieces of one file are concatenated without separator);
* ``fingerprint`` identifies the content without holding it in memory (files: streamed sha256);
* ``name``, ``size_hint`` (bytes, or None; for progress bars) and ``named_splits()`` (None: the
  last ``data.val_fraction`` of tokens is validation; else ``{split: () -> documents}``).

Options: :class:`EmbeddedCorpus` (CPython's ``pydoc_data.topics``), :class:`StdlibCorpus`
(CPython's standard library source without tests), :class:`TextFiles` (your UTF-8 files).
Column files, saved datasets and hub datasets live in ``famlab.data.tables`` and
``famlab.data.hub_corpora``.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from famlab.data.fingerprint import combine, file_digest
from famlab.errors import ConfigError

PIECE = 1 << 20
PY = f"py{sys.version_info.major}.{sys.version_info.minor}"


def cut_pieces(chunks: Iterator[str]) -> Iterator[str]:
    """Re-cut a stream of text chunks so each piece ends after a line break where one exists."""
    carry = ""
    for chunk in chunks:
        text = carry + chunk
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) < 4 * PIECE:
            carry = text
            continue
        cut = cut or len(text)
        carry = text[cut:]
        if cut:
            yield text[:cut]
    if carry:
        yield carry


def read_utf8(path: Path, key: str = "data.corpus.path") -> Iterator[str]:
    """Stream a UTF-8 file as text chunks; ConfigError on invalid bytes or a whitespace-only file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, content = 0, False
    with open(path, "rb") as f:
        while True:
            block = f.read(PIECE)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise ConfigError(
                    f"{key}: {path} is not UTF-8 text (invalid byte at offset {offset + e.start})"
                ) from None
            offset += len(block)
            content = content or bool(text.strip())
            if text:
                yield text
            if not block:
                break
    if not content:
        raise ConfigError(f"{key}: {path} is empty")


class Corpus:
    """Defaults shared by the corpora."""

    name = "corpus"
    size_hint: int | None = None

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def named_splits(self):
        return None

    def check(self) -> None:
        """Fail now (ConfigError) if the corpus cannot be read; called before the tokenizer is built."""


class EmbeddedCorpus(Corpus):
    """CPython's ``pydoc_data.topics`` help texts (~465k characters), one document in sorted topic order."""

    name = "pydoc_topics"

    def _text(self) -> str:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))

    def documents(self) -> Iterator[str]:
        yield self._text()

    @property
    def fingerprint(self) -> str:
        return f"{hashlib.sha256(self._text().encode('utf-8')).hexdigest()[:16]}-{PY}"


class StdlibCorpus(Corpus):
    """The ``.py`` source of this Python's standard library (``sysconfig`` stdlib path), without
    test packages, ``site-packages`` and ``idlelib``'s tests: ~12 MB on CPython 3.11. One document
    per file, in sorted relative-path order; the fingerprint records the Python version."""

    name = "python_stdlib"
    EXCLUDE = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}

    def __init__(self, root: str | None = None):
        self.root = Path(root or sysconfig.get_paths()["stdlib"])

    def files(self) -> list[Path]:
        out = [
            p
            for p in self.root.rglob("*.py")
            if not (set(p.relative_to(self.root).parts[:-1]) & self.EXCLUDE) and not p.name.startswith("test_")
        ]
        if not out:
            raise ConfigError(f"data=stdlib: no Python source files under {self.root}")
        return sorted(out, key=lambda p: p.relative_to(self.root).as_posix())

    @property
    def size_hint(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def documents(self) -> Iterator[str]:
        for p in self.files():
            text = p.read_bytes().decode("utf-8", errors="replace")
            if text.strip():
                yield text if text.endswith("\n") else text + "\n"

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in self.files():
            h.update(p.relative_to(self.root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        return f"{h.hexdigest()[:16]}-{PY}"


def match_files(path, suffixes: tuple[str, ...], key: str = "data.corpus.path") -> list[Path]:
    """Files named by ``path``: a file, a directory (files with ``suffixes`` inside), a glob, or a list of those."""
    if path is None or str(path) in ("", "???"):
        raise ConfigError(f"{key} is required (a file, directory or glob)")
    patterns = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    out: list[Path] = []
    for pattern in patterns:
        p = Path(os.path.expanduser(str(pattern)))
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.name.endswith(suffixes))
        elif any(ch in str(pattern) for ch in "*?["):
            out += sorted(Path(x) for x in glob.glob(os.path.expanduser(str(pattern))) if Path(x).is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"{key}: {p} does not exist")
    if not out:
        raise ConfigError(f"{key}: no {'/'.join(suffixes)} files match {patterns}")
    return out


class TextFiles(Corpus):
    """Local UTF-8 text files: ``path`` is a file, a directory (all ``*.txt`` inside) or a glob."""

    name = "text_files"

    def __init__(self, path: str | list[str] | None = None):
        if path is None or str(path) in ("", "???"):
            raise ConfigError("data.corpus.path is required for data=text_files (a file, directory or glob)")
        self.patterns = path

    def files(self) -> list[Path]:
        files = match_files(self.patterns, (".txt",))
        for f in files:
            if f.stat().st_size == 0:
                raise ConfigError(f"data.corpus.path: {f} is empty")
        return files

    @property
    def size_hint(self) -> int:
        return sum(f.stat().st_size for f in self.files())

    def documents(self) -> Iterator[str]:
        for f in self.files():
            yield from cut_pieces(read_utf8(f))

    @property
    def fingerprint(self) -> str:
        return combine(f"{f.name}:{f.stat().st_size}:{file_digest(f)}" for f in self.files())


def __getattr__(name: str):  # the hub corpora used to live here
    if name in ("HubDataset", "hub_reachable"):
        from famlab.data import hub_corpora

        return getattr(hub_corpora, name)
    raise AttributeError(name)
