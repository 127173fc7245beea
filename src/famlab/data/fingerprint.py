"""Corpus fingerprints that never hold the corpus in memory.

A file's digest is the sha256 of its bytes, streamed in 1 MiB chunks, and memoised in
``<cache>/file-digests.json`` under (absolute path, size, mtime) so that a second run over an
unchanged 1 GB corpus does not read it again; a changed size or mtime recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 1 << 20


def cache_root(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$FAMLAB_CACHE``, else ``~/.cache/famlab``."""
    return Path(os.path.expanduser(cache_dir or os.environ.get("FAMLAB_CACHE") or "~/.cache/famlab"))


def _memo_path(cache_dir: str | None) -> Path:
    return cache_root(cache_dir) / "file-digests.json"


def _read_memo(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def file_digest(path: str | Path, cache_dir: str | None = None) -> str:
    """sha256 hex digest of the file's bytes (memoised by path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    memo_file = _memo_path(cache_dir)
    memo = _read_memo(memo_file)
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    digest = h.hexdigest()
    try:  # best effort; a concurrent writer wins or loses as a whole file (rename is atomic)
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        memo = {**_read_memo(memo_file), key: digest}
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:
        pass
    return digest


def combine(parts) -> str:
    """A 16-hex-digit fingerprint of an iterable of strings."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]
