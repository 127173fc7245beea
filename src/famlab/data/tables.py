"""Corpora of records with a text column, streamed in batches (never loaded whole):

* :class:`TableFiles` - local ``.jsonl`` / ``.json`` (one object per line), ``.parquet``, ``.csv``
  and ``.arrow`` (Arrow IPC file or stream, as ``datasets`` writes) files;
* :class:`SavedDataset` - a directory written by ``datasets.Dataset.save_to_disk`` (or a
  ``DatasetDict``'s, choosing ``split``), its Arrow files read batch by batch.

Each record's text is one document followed by ``separator`` (default a line break).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from famlab.data.corpora import Corpus, match_files
from famlab.data.fingerprint import combine, file_digest
from famlab.errors import ConfigError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
BATCH = 1024


def _missing(field: str, columns, where) -> ConfigError:
    return ConfigError(f"data.corpus.text_field={field!r} is not a column of {where} (columns: {list(columns)})")


def _arrow_batches(path: Path, field: str) -> Iterator[list]:
    import pyarrow as pa

    source = pa.OSFile(str(path))  # plain reads: a memory map would keep every page it read resident
    try:
        reader = pa.ipc.open_file(source)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        schema = reader.schema
    except pa.ArrowInvalid:
        source = pa.OSFile(str(path))
        reader = pa.ipc.open_stream(source)
        batches, schema = iter(reader), reader.schema
    if field not in schema.names:
        raise _missing(field, schema.names, path)
    for batch in batches:
        yield batch.column(field).to_pylist()


def _parquet_batches(path: Path, field: str) -> Iterator[list]:
    import pyarrow.parquet as pq

    f = pq.ParquetFile(str(path))
    if field not in f.schema_arrow.names:
        raise _missing(field, f.schema_arrow.names, path)
    for batch in f.iter_batches(batch_size=BATCH, columns=[field]):
        yield batch.column(0).to_pylist()


def _csv_batches(path: Path, field: str) -> Iterator[list]:
    import pyarrow.csv as pcsv

    reader = pcsv.open_csv(str(path), convert_options=pcsv.ConvertOptions(column_types={field: "string"}))
    if field not in reader.schema.names:
        raise _missing(field, reader.schema.names, path)
    for batch in reader:
        yield batch.column(field).to_pylist()


def _jsonl_batches(path: Path, field: str) -> Iterator[list]:
    batch: list = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ConfigError(
                    f"data.corpus.path: {path} line {n} is not a JSON object (expected one per line)"
                ) from None
            if not isinstance(record, dict) or field not in record:
                raise _missing(field, record.keys() if isinstance(record, dict) else [], f"{path} line {n}")
            batch.append(record[field])
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


READERS = {
    ".jsonl": _jsonl_batches,
    ".json": _jsonl_batches,
    ".parquet": _parquet_batches,
    ".csv": _csv_batches,
    ".arrow": _arrow_batches,
}


def _texts(batches: Iterator[list], separator: str) -> Iterator[str]:
    for batch in batches:
        for text in batch:
            if text:
                yield str(text) + separator


class TableFiles(Corpus):
    """Local jsonl / json-lines / parquet / csv / arrow files; ``text_field`` names the text column."""

    name = "table_files"

    def __init__(self, path=None, text_field: str = "text", separator: str = "\n"):
        self.path, self.text_field, self.separator = path, text_field, separator

    def files(self) -> list[Path]:
        files = match_files(self.path, SUFFIXES)
        for f in files:
            if f.suffix not in READERS:
                raise ConfigError(
                    f"data.corpus.path: {f} has suffix {f.suffix!r}; data=table_files reads "
                    f"{', '.join(SUFFIXES)} (plain text: data=text_files)"
                )
        return files

    @property
    def size_hint(self) -> int:
        return sum(f.stat().st_size for f in self.files())

    def documents(self) -> Iterator[str]:
        for f in self.files():
            yield from _texts(READERS[f.suffix](f, self.text_field), self.separator)

    @property
    def fingerprint(self) -> str:
        return combine(
            [self.text_field, self.separator, *(f"{f.name}:{f.stat().st_size}:{file_digest(f)}" for f in self.files())]
        )


class SavedDataset(Corpus):
    """A ``save_to_disk`` directory (``split`` chooses one of a ``DatasetDict``'s splits)."""

    name = "saved_dataset"

    def __init__(self, path=None, split: str = "train", text_field: str = "text", separator: str = "\n"):
        if path is None or str(path) in ("", "???"):
            raise ConfigError("data.corpus.path is required for data=saved_dataset (a save_to_disk directory)")
        self.path = Path(str(path)).expanduser()
        self.split, self.text_field, self.separator = split, text_field, separator

    def _dir(self) -> Path:
        if not self.path.is_dir():
            raise ConfigError(f"data.corpus.path: {self.path} is not a directory written by save_to_disk")
        if (self.path / "dataset_dict.json").exists():
            if not (self.path / str(self.split)).is_dir():
                splits = json.loads((self.path / "dataset_dict.json").read_text()).get("splits", [])
                raise ConfigError(f"data.corpus.split={self.split!r} is not a split of {self.path} (splits: {splits})")
            return self.path / str(self.split)
        if not (self.path / "state.json").exists():
            raise ConfigError(
                f"data.corpus.path: {self.path} is not a directory written by save_to_disk "
                f"(no state.json or dataset_dict.json)"
            )
        return self.path

    def arrow_files(self) -> list[Path]:
        d = self._dir()
        state = json.loads((d / "state.json").read_text())
        return [d / f["filename"] for f in state.get("_data_files", [])]

    @property
    def size_hint(self) -> int:
        return sum(f.stat().st_size for f in self.arrow_files())

    def documents(self) -> Iterator[str]:
        for f in self.arrow_files():
            yield from _texts(_arrow_batches(f, self.text_field), self.separator)

    @property
    def fingerprint(self) -> str:
        return combine(
            [
                self.split,
                self.text_field,
                self.separator,
                *(f"{f.name}:{f.stat().st_size}:{file_digest(f)}" for f in self.arrow_files()),
            ]
        )
