"""Corpus kinds from small generated files: text, jsonl, parquet, csv, arrow, save_to_disk,
the standard-library corpus and enwik8's byte split; each streams and fingerprints its content."""

from __future__ import annotations

import json
import sys

import pytest

from famlab.data.corpora import StdlibCorpus, TextFiles, cut_pieces
from famlab.data.datamodule import LMDataModule
from famlab.data.hub_corpora import Enwik8
from famlab.data.tables import SavedDataset, TableFiles
from famlab.errors import ConfigError

RECORDS = [{"id": i, "text": f"record {i}: the {['quick', 'lazy', 'brown'][i % 3]} fox {i * i}"} for i in range(400)]
EXPECTED = "".join(r["text"] + "\n" for r in RECORDS)


def _write(tmp_path, fmt: str):
    import pyarrow as pa

    table = pa.table({"id": [r["id"] for r in RECORDS], "text": [r["text"] for r in RECORDS]})
    path = tmp_path / f"records.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path, row_group_size=100)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif fmt == "arrow":
        with pa.ipc.new_file(str(path), table.schema) as w:
            w.write_table(table, max_chunksize=64)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "arrow"])
def test_table_files_stream_the_text_column(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    corpus = TableFiles(str(path), text_field="text")
    assert "".join(corpus.documents()) == EXPECTED
    dm = LMDataModule(corpus, {"kind": "bytes"}, context=16, cache_dir=str(tmp_path / "cache")).prepare()
    assert dm.meta["train_tokens"] + dm.meta["val_tokens"] == len(EXPECTED.encode())
    with pytest.raises(ConfigError, match=r"data.corpus.text_field='body' is not a column of .*records"):
        list(TableFiles(str(path), text_field="body").documents())


def test_save_to_disk_directory(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(RECORDS)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(10))}).save_to_disk(str(tmp_path / "dict"))
    assert "".join(SavedDataset(str(tmp_path / "single")).documents()) == EXPECTED
    assert "".join(SavedDataset(str(tmp_path / "dict"), split="train").documents()) == EXPECTED
    with pytest.raises(ConfigError, match=r"data.corpus.split='test' is not a split of"):
        list(SavedDataset(str(tmp_path / "dict"), split="test").documents())
    with pytest.raises(ConfigError, match="is not a directory written by save_to_disk"):
        list(SavedDataset(str(tmp_path)).documents())
    same = SavedDataset(str(tmp_path / "dict"), split="train").fingerprint  # same content, same fingerprint
    assert SavedDataset(str(tmp_path / "single")).fingerprint == same
    assert SavedDataset(str(tmp_path / "dict"), split="validation").fingerprint != same


def test_text_files_are_streamed_in_pieces_and_fingerprinted_by_content(tmp_path, monkeypatch):
    monkeypatch.setattr("famlab.data.corpora.PIECE", 1000)
    f = tmp_path / "big.txt"
    text = "".join(f"line {i} of a file larger than one piece\n" for i in range(2000))
    f.write_text(text)
    pieces = list(TextFiles(str(f)).documents())
    assert "".join(pieces) == text and len(pieces) > 10 and all(p.endswith("\n") for p in pieces)
    assert list(cut_pieces(iter(["no newline " * 10]))) == ["no newline " * 10]
    fp = TextFiles(str(f)).fingerprint
    f.write_text(text.replace("line 7 ", "line 8 "))
    assert TextFiles(str(f)).fingerprint != fp


def test_stdlib_corpus_has_no_tests_and_records_the_python_version():
    corpus = StdlibCorpus()
    files = corpus.files()
    rel = [p.relative_to(corpus.root).as_posix() for p in files]
    assert "os.py" in rel and "json/decoder.py" in rel
    assert not [r for r in rel if r.startswith(("test/", "idlelib/idle_test/")) or "/tests/" in r]
    assert corpus.fingerprint.endswith(f"py{sys.version_info.major}.{sys.version_info.minor}")
    assert corpus.size_hint > 5_000_000


def test_enwik8_byte_split_from_a_local_file(tmp_path):
    import zipfile

    raw = bytes(range(256)) * 40 + "naïve café".encode() * 10  # 10,240 + 120 bytes, with multi-byte chars
    (tmp_path / "enwik8").write_bytes(raw)
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as z:
        z.writestr("enwik8", raw)
    for name in ("enwik8", "enwik8.zip"):
        corpus = Enwik8(str(tmp_path / name), train_bytes=9000, val_bytes=1000)
        dm = LMDataModule(corpus, {"kind": "bytes"}, context=32, cache_dir=str(tmp_path / "cache")).prepare()
        assert dm.train_tokens.to_tensor().tolist() == list(raw[:9000])
        assert dm.val_tokens.to_tensor().tolist() == list(raw[9000:10000])
        assert dm.prepared.split("test").to_tensor().tolist() == list(raw[10000:])
    with pytest.raises(ConfigError, match="data.corpus.path: .*missing does not exist"):
        Enwik8(str(tmp_path / "missing"))


def test_table_file_errors_name_the_file_and_what_is_allowed(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("plain\n")
    with pytest.raises(
        ConfigError,
        match=r"notes.txt has suffix '.txt'; data=table_files reads .jsonl, .json, "
        r".parquet, .csv, .arrow \(plain text: data=text_files\)",
    ):
        TableFiles(str(txt)).files()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl line 3 is not a JSON object \(expected one per line\)"):
        list(TableFiles(str(bad)).documents())
    with pytest.raises(ConfigError, match=r"data.corpus.path is required \(a file, directory or glob\)"):
        TableFiles(None).files()


def test_prepare_cli_refuses_generated_data_with_one_line(tmp_path):
    from famlab.data.prepare import main

    assert main(["prepare", "data=recall"]) == 2
    assert main(["data=embedded", "data.no_such_key=1"]) == 1  # Hydra's message, no traceback
    assert main(["--help"]) == 0
