"""Token shards on disk: writing them during preparation and reading windows from memory maps.

A stream of token ids is stored as consecutive raw files ``<stream>-00000.bin``, ... of one dtype
(uint16 when the vocabulary fits, else uint32), each at most ``shard_tokens`` long. A
:class:`TokenStore` is a range ``[start, stop)`` of such a stream; windows are gathered from
``numpy.memmap`` views, so only the pages a batch touches are read and memory does not grow with
the corpus. A store pickles without its maps (``ddp_spawn`` children reopen the files).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays to ``<root>/<stream>-NNNNN.bin`` files of at most ``shard_tokens`` ids."""

    def __init__(self, root: Path, stream: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.stream, self.dtype, self.shard_tokens = root, stream, dtype, int(shard_tokens)
        self.shards: list[dict] = []
        self._file = None
        self.total = 0

    def _open_next(self) -> None:
        if self._file:
            self._file.close()
        name = f"{self.stream}-{len(self.shards):05d}.bin"
        self._file = open(self.root / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            self._file.write(part.tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.total += len(part)

    def close(self) -> list[dict]:
        if self._file:
            self._file.flush()
            self._file.close()
            self._file = None
        return self.shards


def read_range(root: Path, shards: list[dict], dtype: np.dtype, start: int, stop: int, chunk: int = 1 << 22):
    """Yield the stream's tokens ``[start, stop)`` in arrays of at most ``chunk`` ids (plain reads, no map)."""
    offset = 0
    for shard in shards:
        lo, hi = max(start, offset), min(stop, offset + shard["tokens"])
        for a in range(lo, hi, chunk):
            b = min(hi, a + chunk)
            yield np.fromfile(root / shard["file"], dtype=dtype, count=b - a, offset=(a - offset) * dtype.itemsize)
        offset += shard["tokens"]


class TokenStore:
    """Tokens ``[start, stop)`` of a sharded stream, read through memory maps."""

    def __init__(self, root: Path, shards: list[dict], dtype, start: int, stop: int):
        self.root, self.shards, self.dtype = Path(root), list(shards), np.dtype(dtype)
        self.start, self.stop = int(start), int(stop)
        self.offsets = np.cumsum([0] + [s["tokens"] for s in self.shards])
        self._maps: list | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def numel(self) -> int:
        return len(self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def maps(self) -> list:
        if self._maps is None:
            self._maps = [np.memmap(self.root / s["file"], dtype=self.dtype, mode="r", shape=(s["tokens"],))
                          if s["tokens"] else np.zeros(0, self.dtype) for s in self.shards]
        return self._maps

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this store (a copy)."""
        a, b = a + self.start, b + self.start
        i = int(np.searchsorted(self.offsets, a, side="right")) - 1
        parts, maps = [], self.maps()
        while a < b:
            lo = a - int(self.offsets[i])
            take = min(b - a, self.shards[i]["tokens"] - lo)
            parts.append(maps[i][lo : lo + take])
            a += take
            i += 1
        if not parts:
            return np.zeros(0, self.dtype)
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``[len(starts), length]`` int64 windows beginning at ``starts`` (offsets into this store)."""
        g = starts.astype(np.int64) + self.start
        shard = np.searchsorted(self.offsets, g, side="right") - 1
        if (shard == shard[0]).all() and (g + length <= self.offsets[shard[0] + 1]).all():
            idx = (g - self.offsets[shard[0]])[:, None] + np.arange(length)[None, :]
            return self.maps()[shard[0]][idx].astype(np.int64)
        return np.stack([self.read(int(s), int(s) + length) for s in starts]).astype(np.int64)

    def __getitem__(self, item: slice):
        """Tokens of a slice as an int64 tensor."""
        import torch

        a, b, step = item.indices(len(self))
        return torch.from_numpy(self.read(a, b)[::step].astype(np.int64))

    def to_tensor(self):
        """All tokens as an int64 tensor (for tests and small stores)."""
        return self[:]
