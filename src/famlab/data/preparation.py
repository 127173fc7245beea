"""Prepare once, train many: a corpus tokenized into token shards on disk plus a manifest.

``<cache>/<corpus>-<tokenizer>-<key>/`` holds ``manifest.json`` (corpus fingerprint, tokenizer,
dtype, token counts per split and shard, unigram loss), ``tokenizer.json`` and the shards
(``famlab.data.shards``). ``key`` hashes the corpus fingerprint, the tokenizer settings,
``val_fraction`` and ``max_tokens``, so every later run and sweep job with the same data reuses it.

Preparation streams documents: the tokenizer is fitted on a bounded sample (the first
``train_chars`` characters, never reaching into the validation tail), batches of documents are
tokenized by ``num_proc`` worker processes (in order, a bounded number in flight) and appended to
the shards. It writes into a temporary directory and renames it into place while holding a file
lock: a second process preparing the same data waits and reuses the result, and a killed process
leaves only a temporary directory that the next preparation removes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from filelock import FileLock

from famlab.data.fingerprint import cache_root, combine
from famlab.data.shards import ShardWriter, TokenStore, read_range, token_dtype
from famlab.data.tokenizers import TOKENIZERS, build_tokenizer, load_tokenizer, save_tokenizer, tokenizer_from_state
from famlab.errors import ConfigError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # worker processes are the parallelism
FORMAT = 1
BATCH_CHARS = 1 << 22
SHARD_TOKENS = 1 << 28
TRAIN_CHARS = 10_000_000
log = logging.getLogger("famlab")


def _positive_or_none(key: str, value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{key} must be a positive integer or null, got {value!r}")
    return value


def tokenizer_settings(tok_cfg: dict) -> dict:
    """The settings that decide the token ids, validated (``kind``, plus ``vocab_size`` /
    ``train_chars`` / ``name`` where the kind uses them)."""
    cfg = dict(tok_cfg or {"kind": "bytes"})
    kind = cfg.get("kind", "bytes")
    if kind not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer.kind={kind!r} is not one of {sorted(TOKENIZERS)}")
    out = {"kind": kind}
    if kind in ("chars", "bpe"):
        out["train_chars"] = _positive_or_none("data.tokenizer.train_chars", cfg.get("train_chars")) or TRAIN_CHARS
    if kind == "bpe":
        out["vocab_size"] = 512 if cfg.get("vocab_size") is None else cfg["vocab_size"]
        TOKENIZERS["bpe"](vocab_size=out["vocab_size"])  # validates
    if kind == "pretrained":
        if not cfg.get("name"):
            raise ConfigError(
                "data.tokenizer.name is required for data.tokenizer.kind=pretrained "
                "(a hub model id such as gpt2, or a path to a tokenizer.json)"
            )
        out["name"] = str(cfg["name"])
    return out


@dataclass
class Prepared:
    """A prepared directory: its manifest, tokenizer and splits as :class:`TokenStore` ranges."""

    path: Path
    manifest: dict
    tokenizer: object
    reused: bool = False

    def split(self, name: str) -> TokenStore:
        s = self.manifest["splits"][name]
        stream = self.manifest["streams"][s["stream"]]
        return TokenStore(self.path, stream["shards"], self.manifest["dtype"], s["start"], s["stop"])


def load_prepared(path: Path, reused: bool = True) -> Prepared:
    manifest = json.loads((path / "manifest.json").read_text())
    return Prepared(path, manifest, load_tokenizer(path / "tokenizer.json"), reused)


def _ready(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def prepared_path(corpus, tok_cfg: dict, cache_dir: str | None, val_fraction: float, max_tokens: int | None) -> Path:
    settings = tokenizer_settings(tok_cfg)
    key = combine(
        [FORMAT, corpus.name, corpus.fingerprint, json.dumps(settings, sort_keys=True), val_fraction, max_tokens]
    )
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(corpus.name))
    return cache_root(cache_dir) / f"{slug}-{settings['kind']}-{key}"


def prepare_corpus(
    corpus,
    tok_cfg: dict,
    cache_dir: str | None = None,
    val_fraction: float = 0.1,
    max_tokens: int | None = None,
    num_proc: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool | None = None,
) -> Prepared:
    """The prepared directory for (corpus, tokenizer, split, budget): reused if present, else written."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    _positive_or_none("data.max_tokens", max_tokens)
    _positive_or_none("data.num_proc", num_proc)
    _positive_or_none("data.shard_tokens", shard_tokens)
    final = prepared_path(corpus, tok_cfg, cache_dir, val_fraction, max_tokens)
    if _ready(final):
        return load_prepared(final)
    settings = tokenizer_settings(tok_cfg)
    corpus.check()
    tokenizer = build_tokenizer(**{**dict(tok_cfg or {}), **settings})  # before anything is written
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f"{final.name}.lock")):
        if _ready(final):
            return load_prepared(final)
        for stale in final.parent.glob(f"{final.name}.tmp-*"):  # left by a killed preparation
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = write_prepared(
                tmp,
                corpus,
                tokenizer,
                settings,
                val_fraction,
                max_tokens,
                num_proc or min(8, os.cpu_count() or 1),
                shard_tokens,
                progress,
            )
            try:
                os.rename(tmp, final)
            except OSError:
                if not _ready(final):  # renamed by a process that did not honour the lock: use its result
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info(
        "prepared %s tokens (%s) in %.1f s: %s",
        f"{manifest['total_tokens']:,}",
        manifest["dtype"],
        manifest["seconds"],
        final,
    )
    return load_prepared(final, reused=False)


def _as_text(doc) -> str:
    return doc.decode("utf-8", errors="replace") if isinstance(doc, (bytes, bytearray)) else doc


def fit_sample(docs, tokenizer, train_chars: int, val_fraction: float | None):
    """Fit on the first ``train_chars`` characters (when the corpus turns out shorter than
    ``train_chars / (1 - val_fraction)``, on its first ``1 - val_fraction``). Returns the document
    iterator with the buffered sample put back in front."""
    limit = train_chars if val_fraction is None else int(train_chars / (1 - val_fraction)) + 1
    buffered, n, exhausted = [], 0, False
    while n < limit:
        doc = next(docs, None)
        if doc is None:
            exhausted = True
            break
        buffered.append(doc)
        n += len(doc)
    sample = "".join(_as_text(d) for d in buffered)
    if exhausted and val_fraction is not None:
        sample = sample[: int(len(sample) * (1 - val_fraction))]
    tokenizer.fit(sample[:train_chars])
    return chain(buffered, docs)


def _batches(docs):
    batch, n = [], 0
    for doc in docs:
        batch.append(doc)
        n += len(doc)
        if n >= BATCH_CHARS:
            yield batch, n
            batch, n = [], 0
    if batch:
        yield batch, n


_WORKER = {}


def _init_worker(state: dict) -> None:
    _WORKER["tok"] = tokenizer_from_state(state)


def _encode_worker(batch: list) -> np.ndarray:
    return _WORKER["tok"].encode_many(batch)


def tokenized(docs, tokenizer, num_proc: int):
    """``(ids, characters)`` per batch of documents, in corpus order; a worker pool only when the
    corpus has more than one batch and ``num_proc > 1``."""
    batches = _batches(docs)
    head = [b for b in (next(batches, None), next(batches, None)) if b is not None]
    if num_proc <= 1 or len(head) < 2:
        for batch, n in chain(head, batches):
            yield tokenizer.encode_many(batch), n
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.state(),)) as pool:
        pending: deque = deque()
        for batch, n in chain(head, batches):
            pending.append((pool.apply_async(_encode_worker, (batch,)), n))
            if len(pending) >= 2 * num_proc:
                result, m = pending.popleft()
                yield result.get(), m
        while pending:
            result, m = pending.popleft()
            yield result.get(), m


def write_prepared(
    root: Path,
    corpus,
    tokenizer,
    settings: dict,
    val_fraction: float,
    max_tokens: int | None,
    num_proc: int,
    shard_tokens: int,
    progress: bool | None,
) -> dict:
    """Fit, tokenize and write shards, tokenizer.json and (last) manifest.json into ``root``."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    named = corpus.named_splits()
    streams = named or {"all": corpus.documents}
    first = next(iter(streams))
    docs = iter(streams[first]())
    if tokenizer.needs_fit:
        docs = fit_sample(docs, tokenizer, settings["train_chars"], None if named else val_fraction)
    save_tokenizer(tokenizer, root / "tokenizer.json")
    vocab, dtype = tokenizer.vocab_size, token_dtype(tokenizer.vocab_size)
    counts = np.zeros(vocab, dtype=np.int64)
    out_streams, chars, truncated = {}, 0, False
    bar = tqdm(
        total=corpus.size_hint,
        unit="B",
        unit_scale=True,
        desc=f"tokenizing {corpus.name}",
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
    )
    for name, make in streams.items():
        source = docs if name == first else iter(make())
        budget = max_tokens if name in ("all", "train") else None
        writer = ShardWriter(root, name, dtype, shard_tokens)
        batches = tokenized(source, tokenizer, num_proc)
        try:
            for ids, n in batches:
                if budget is not None and writer.total + len(ids) >= budget:
                    ids, truncated = ids[: budget - writer.total], True
                writer.write(ids)
                chars += n
                bar.update(n)
                if name in ("all", "train"):
                    counts += np.bincount(ids, minlength=vocab)[:vocab]
                if budget is not None and writer.total >= budget:
                    break
        finally:
            batches.close()  # stops the worker pool at once when the budget is reached
        out_streams[name] = {"tokens": writer.total, "shards": writer.close()}
    bar.close()
    total = sum(s["tokens"] for s in out_streams.values())
    if total == 0:
        raise ConfigError(f"data: corpus {corpus.name} has no text")
    if named:
        splits = {name: {"stream": name, "start": 0, "stop": s["tokens"]} for name, s in out_streams.items()}
    else:
        n_val = int(total * val_fraction)
        splits = {
            "train": {"stream": "all", "start": 0, "stop": total - n_val},
            "val": {"stream": "all", "start": total - n_val, "stop": total},
        }
        for ids in read_range(root, out_streams["all"]["shards"], dtype, total - n_val, total):
            counts -= np.bincount(ids, minlength=vocab)[:vocab]
    for s in splits.values():
        s["tokens"] = s["stop"] - s["start"]
    p = counts[counts > 0] / max(1, counts.sum())
    manifest = {
        "format": FORMAT,
        "corpus": corpus.name,
        "fingerprint": corpus.fingerprint,
        "python": sys.version.split()[0],
        "tokenizer": {**settings, "vocab_size": vocab},
        "dtype": dtype.name,
        "val_fraction": None if named else val_fraction,
        "max_tokens": max_tokens,
        "truncated": truncated,
        "characters": chars,
        "total_tokens": total,
        "chars_per_token": chars / total,
        "unigram_loss": float(-(p * np.log(p)).sum()),
        "streams": out_streams,
        "splits": splits,
        "seconds": round(time.perf_counter() - t0, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
