"""Tokenizers: bytes (default), characters, or a BPE trained locally with ``tokenizers``.

All share ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``, and
``save(path)`` / :func:`load_tokenizer` so a run directory can be reloaded for sampling.
"""
from __future__ import annotations

import json
from pathlib import Path

from famlab.errors import ConfigError


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256; decoding replaces invalid sequences."""

    kind = "bytes"
    vocab_size = 256

    def __init__(self, **_):
        pass

    def fit(self, text: str) -> "ByteTokenizer":
        return self

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {"kind": self.kind}


class CharTokenizer:
    """One id per character seen in the training text (sorted); unknown characters map to 0."""

    kind = "chars"

    def __init__(self, chars: str | None = None, **_):
        self.chars = chars or ""
        self._index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return max(1, len(self.chars))

    def fit(self, text: str) -> "CharTokenizer":
        self.__init__("".join(sorted(set(text))))
        return self

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids if 0 <= int(i) < len(self.chars))

    def state(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE trained locally (no hub) with the ``tokenizers`` library."""

    kind = "bpe"

    def __init__(self, vocab_size: int = 512, serialized: str | None = None, **_):
        if vocab_size < 257:
            raise ConfigError(f"data.tokenizer.vocab_size must be >= 257 for BPE, got {vocab_size}")
        self.target_vocab = vocab_size
        self._tok = None
        if serialized is not None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(serialized)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size() if self._tok else self.target_vocab

    def fit(self, text: str) -> "BPETokenizer":
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

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def state(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.target_vocab, "serialized": self._tok.to_str()}


TOKENIZERS = {"bytes": ByteTokenizer, "chars": CharTokenizer, "bpe": BPETokenizer}


def build_tokenizer(kind: str, **kwargs):
    """``data.tokenizer.kind`` in bytes | chars | bpe."""
    if kind not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer.kind={kind!r} is not one of {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind](**kwargs)


def save_tokenizer(tokenizer, path: str | Path) -> None:
    Path(path).write_text(json.dumps(tokenizer.state()))


def load_tokenizer(path: str | Path):
    state = json.loads(Path(path).read_text())
    kind = state.pop("kind")
    return TOKENIZERS[kind](**state)
