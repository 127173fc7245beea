"""Tokenizers: bytes (default), characters, a BPE trained locally with ``tokenizers``, or a
pretrained tokenizer by hub name or ``tokenizer.json`` path.

All share ``encode(str) -> list[int]``, ``encode_array(str | bytes)`` and ``encode_many(docs)``
(numpy id arrays: the fast paths used by data preparation), ``decode(list[int]) -> str``, ``vocab_size``, ``needs_fit`` /
``fit(sample_text)``, and ``state()`` / :func:`tokenizer_from_state` so a run directory or a
prepared data directory can be reloaded without the corpus or a network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from famlab.errors import ConfigError


def _text(doc: str | bytes) -> str:
    return doc.decode("utf-8", errors="replace") if isinstance(doc, (bytes, bytearray)) else doc


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256; decoding replaces invalid sequences."""

    kind = "bytes"
    vocab_size = 256
    needs_fit = False

    def __init__(self, **_):
        pass

    def fit(self, text: str) -> ByteTokenizer:
        return self

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, doc: str | bytes) -> np.ndarray:
        raw = doc if isinstance(doc, (bytes, bytearray)) else doc.encode("utf-8")
        return np.frombuffer(raw, dtype=np.uint8)

    def encode_many(self, docs: list) -> np.ndarray:
        return np.frombuffer(
            b"".join(d if isinstance(d, (bytes, bytearray)) else d.encode("utf-8") for d in docs), dtype=np.uint8
        )

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {"kind": self.kind}


class CharTokenizer:
    """One id per character of the fitting sample (sorted); unknown characters map to 0."""

    kind = "chars"
    needs_fit = True

    def __init__(self, chars: str | None = None, **_):
        self.chars = chars or ""
        self._index = {c: i for i, c in enumerate(self.chars)}
        self._points = np.frombuffer(self.chars.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)

    @property
    def vocab_size(self) -> int:
        return max(1, len(self.chars))

    def fit(self, text: str) -> CharTokenizer:
        self.__init__("".join(sorted(set(text))))
        return self

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, 0) for c in text]

    def encode_array(self, doc: str | bytes) -> np.ndarray:
        points = np.frombuffer(_text(doc).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if not len(self._points):
            return np.zeros(len(points), dtype=np.uint32)
        idx = np.minimum(np.searchsorted(self._points, points), len(self._points) - 1)
        return np.where(self._points[idx] == points, idx, 0).astype(np.uint32)

    def encode_many(self, docs: list) -> np.ndarray:
        return self.encode_array("".join(_text(d) for d in docs))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < len(self.chars))

    def state(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class _HFTokenizer:
    """Shared encode/decode over a ``tokenizers.Tokenizer`` held in ``self._tok``."""

    _tok = None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_array(self, doc: str | bytes) -> np.ndarray:
        return np.asarray(self._tok.encode(_text(doc)).ids, dtype=np.uint32)

    def encode_many(self, docs: list) -> np.ndarray:
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)  # fast: no character offsets
        encs = batch([_text(d) for d in docs])
        return np.concatenate([np.asarray(e.ids, dtype=np.uint32) for e in encs]) if encs else np.zeros(0, np.uint32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])


class BPETokenizer(_HFTokenizer):
    """Byte-level BPE trained locally (no hub) with the ``tokenizers`` library."""

    kind = "bpe"
    needs_fit = True

    def __init__(self, vocab_size: int | None = 512, serialized: str | None = None, **_):
        vocab_size = 512 if vocab_size is None else vocab_size
        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise ConfigError(f"data.tokenizer.vocab_size must be >= 257 for BPE, got {vocab_size}")
        self.target_vocab = vocab_size
        if serialized is not None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(serialized)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size() if self._tok else self.target_vocab

    def fit(self, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.target_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        chunk = 1 << 16
        tok.train_from_iterator((text[i : i + chunk] for i in range(0, len(text), chunk)), trainer=trainer)
        self._tok = tok
        return self

    def state(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.target_vocab, "serialized": self._tok.to_str()}


class PretrainedTokenizer(_HFTokenizer):
    """A pretrained ``tokenizers`` tokenizer: ``name`` is a hub model id (``gpt2``; needs a network
    or the hub cache) or a path to a ``tokenizer.json`` (or a directory holding one)."""

    kind = "pretrained"
    needs_fit = False

    def __init__(self, name: str | None = None, serialized: str | None = None, **_):
        from tokenizers import Tokenizer

        if serialized is not None:
            self.name, self._tok = name, Tokenizer.from_str(serialized)
            return
        if not name:
            raise ConfigError(
                "data.tokenizer.name is required for data.tokenizer.kind=pretrained "
                "(a hub model id such as gpt2, or a path to a tokenizer.json)"
            )
        self.name = str(name)
        path = Path(self.name).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            from famlab.data.hub import hub_file

            path = Path(hub_file(self.name, "tokenizer.json", "data.tokenizer.name"))
        self._tok = Tokenizer.from_file(str(path))

    def fit(self, text: str) -> PretrainedTokenizer:
        return self

    def state(self) -> dict:
        return {"kind": self.kind, "name": self.name, "serialized": self._tok.to_str()}


TOKENIZERS = {"bytes": ByteTokenizer, "chars": CharTokenizer, "bpe": BPETokenizer, "pretrained": PretrainedTokenizer}


def build_tokenizer(kind: str, **kwargs):
    """``data.tokenizer.kind`` in bytes | chars | bpe | pretrained (other keys go to the class)."""
    if kind not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer.kind={kind!r} is not one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind](**kwargs)


def tokenizer_from_state(state: dict):
    state = dict(state)
    return TOKENIZERS[state.pop("kind")](**state)


def save_tokenizer(tokenizer, path: str | Path) -> None:
    Path(path).write_text(json.dumps(tokenizer.state()))


def load_tokenizer(path: str | Path):
    return tokenizer_from_state(json.loads(Path(path).read_text()))
