"""Hub corpora: any Hugging Face dataset by name (:class:`HubDataset`, optionally streamed so the
first ``data.max_tokens`` tokens of a 10B-token dataset are read without downloading it all), and
enwik8 at the byte level with the standard 90M / 5M / 5M split (:class:`Enwik8`).

The fingerprint names the dataset (name, config, splits, revision), so a prepared directory is
found and used without any network. Offline, loading fails within seconds (``famlab.data.hub``).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from famlab.data.corpora import PIECE, Corpus
from famlab.data.fingerprint import combine, file_digest
from famlab.data.hub import hub_reachable, load_hub_dataset  # noqa: F401 - hub_reachable re-exported
from famlab.errors import ConfigError

BATCH = 1000


class HubDataset(Corpus):
    """A hub dataset (``karpathy/tiny_shakespeare``, ``HuggingFaceFW/fineweb-edu``, ...).

    ``split`` is read for training (with validation the last ``data.val_fraction`` of its tokens),
    unless ``val_split`` names the dataset's own validation split. ``streaming`` reads rows as
    they download. Each row's ``text_field`` is one document followed by ``separator``.
    """

    def __init__(
        self,
        hub_name: str,
        config: str | None = None,
        split: str = "train",
        text_field: str = "text",
        val_split: str | None = None,
        streaming: bool = False,
        revision: str | None = None,
        separator: str = "\n",
        cache_dir: str | None = None,
    ):
        if not hub_name:
            raise ConfigError("data.corpus.hub_name is required (a hub dataset id such as roneneldan/TinyStories)")
        self.hub_name, self.config, self.split, self.text_field = hub_name, config, split, text_field
        self.val_split, self.streaming, self.revision = val_split, bool(streaming), revision
        self.separator, self.cache_dir = separator, cache_dir
        self.name = hub_name.replace("/", "_") + (f"_{config}" if config else "")
        self._loaded: dict = {}

    @property
    def fingerprint(self) -> str:
        return combine(
            [
                "hub",
                self.hub_name,
                self.config,
                self.split,
                self.val_split,
                self.text_field,
                self.revision or "main",
                self.separator,
            ]
        )

    def _load(self, split: str):
        if split not in self._loaded:
            self._loaded[split] = load_hub_dataset(
                self.hub_name, self.config, split, self.streaming, self.revision, self.cache_dir
            )
        return self._loaded[split]

    def check(self) -> None:
        self._load(self.split)

    def _rows(self, split: str) -> Iterator[str]:
        ds = self._load(split)
        columns = ds.column_names
        if columns is not None and self.text_field not in columns:
            raise ConfigError(f"data.corpus.text_field={self.text_field!r} not in {columns}")
        if columns is not None and len(columns) > 1:
            ds = ds.select_columns([self.text_field])
        for batch in ds.iter(batch_size=BATCH):
            if self.text_field not in batch:
                raise ConfigError(f"data.corpus.text_field={self.text_field!r} not in {sorted(batch)}")
            for text in batch[self.text_field]:
                if text:
                    yield text + self.separator

    def documents(self) -> Iterator[str]:
        return self._rows(self.split)

    def named_splits(self):
        if not self.val_split:
            return None
        return {"train": lambda: self._rows(self.split), "val": lambda: self._rows(self.val_split)}


class Enwik8(Corpus):
    """The first 10^8 bytes of the English Wikipedia XML dump (Hutter prize), as bytes.

    ``path``: a local ``enwik8`` or ``enwik8.zip`` (http://mattmahoney.net/dc/enwik8.zip); without
    it the hub copy ``hub_name`` (config ``enwik8-raw``, one row) is used. Splits are byte ranges:
    train = the first ``train_bytes``, val = the next ``val_bytes``, test = the rest (90M/5M/5M).
    Meant for ``data.tokenizer.kind=bytes`` (bits per byte = the usual enwik8 bpc).
    """

    name = "enwik8"

    def __init__(
        self,
        path: str | None = None,
        hub_name: str = "LTCB/enwik8",
        config: str = "enwik8-raw",
        revision: str | None = "refs/convert/parquet",
        train_bytes: int = 90_000_000,
        val_bytes: int = 5_000_000,
        cache_dir: str | None = None,
    ):
        self.path = Path(str(path)).expanduser() if path else None
        if self.path is not None and not self.path.is_file():
            raise ConfigError(f"data.corpus.path: {self.path} does not exist (an enwik8 or enwik8.zip file)")
        self.hub_name, self.config, self.revision, self.cache_dir = hub_name, config, revision, cache_dir
        self.train_bytes, self.val_bytes = int(train_bytes), int(val_bytes)
        self._hub_bytes: bytes | None = None

    @property
    def fingerprint(self) -> str:
        source = file_digest(self.path) if self.path else f"hub:{self.hub_name}:{self.config}:{self.revision}"
        return combine(["enwik8", source, self.train_bytes, self.val_bytes])

    size_hint = 100_000_000

    def check(self) -> None:
        if self.path is None and self._hub_bytes is None:
            ds = load_hub_dataset(self.hub_name, self.config, "train", False, self.revision, self.cache_dir)
            self._hub_bytes = "".join(ds["text"]).encode("utf-8")

    def _open(self):
        if self.path is None:
            self.check()
            import io

            return io.BytesIO(self._hub_bytes)
        if zipfile.is_zipfile(self.path):
            z = zipfile.ZipFile(self.path)
            return z.open(z.namelist()[0])
        return open(self.path, "rb")

    def _range(self, start: int, stop: int | None) -> Iterator[bytes]:
        with self._open() as f:
            left = start
            while left > 0:  # zip members cannot seek cheaply: read past the start
                left -= len(f.read(min(PIECE, left)) or b"\0" * left)
            remaining = None if stop is None else stop - start
            while remaining is None or remaining > 0:
                block = f.read(PIECE if remaining is None else min(PIECE, remaining))
                if not block:
                    break
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def documents(self) -> Iterator[bytes]:
        return self._range(0, None)

    def named_splits(self):
        t, v = self.train_bytes, self.val_bytes
        return {
            "train": lambda: self._range(0, t),
            "val": lambda: self._range(t, t + v),
            "test": lambda: self._range(t + v, None),
        }
