"""Token shards on disk: writing them during preparation and reading windows from them.

A stream of token ids is stored as consecutive raw files ``<stream>-00000.bin``, ... of one dtype
(uint16 when the vocabulary fits, else uint32), each at most ``shard_tokens`` long. A
:class:`TokenStore` is a range ``[start, stop)`` of such a stream; windows are read from the files
on demand (the operating system's page cache keeps hot data in RAM), so the process's memory does
not grow with the corpus. A store pickles without its file handles (``ddp_spawn`` children reopen).
"""

from __future__ import annotations

import os
import weakref
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


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


IN_MEMORY_BYTES = 16 << 20  # a store this small is read whole once and windows are gathered in memory


class TokenStore:
    """Tokens ``[start, stop)`` of a sharded stream, read with positional reads (``os.preadv``)
    straight into the output array. Resident memory holds only the windows asked for: pages of a
    memory map stay mapped once touched (and the kernel maps up to 64 KiB around each fault), so a
    long run over a memory map would grow towards the corpus size. A store of at most
    ``IN_MEMORY_BYTES`` is read whole at its first window request and its windows are gathered with
    one indexing op (a batch of windows costs one call instead of one read per window)."""

    def __init__(self, root: Path, shards: list[dict], dtype, start: int, stop: int):
        self.root, self.shards, self.dtype = Path(root), list(shards), np.dtype(dtype)
        self.start, self.stop = int(start), int(stop)
        self.offsets = np.cumsum([0] + [s["tokens"] for s in self.shards])
        self._fds: list | None = None
        self._tokens: np.ndarray | None = None  # the whole store, when it is small

    def __len__(self) -> int:
        return self.stop - self.start

    def numel(self) -> int:
        return len(self)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None, "_tokens": None}

    def _fd(self, i: int) -> int:
        if self._fds is None:
            self._fds = [os.open(self.root / s["file"], os.O_RDONLY) for s in self.shards]
            weakref.finalize(self, _close_all, list(self._fds))
        return self._fds[i]

    def _read_into(self, a: int, out: np.ndarray) -> None:
        """Fill ``out`` (1-D, contiguous) with this store's tokens from offset ``a``."""
        g, pos, size = a + self.start, 0, self.dtype.itemsize
        i = int(np.searchsorted(self.offsets, g, side="right")) - 1
        while pos < len(out):
            lo = g + pos - int(self.offsets[i])
            take = min(len(out) - pos, self.shards[i]["tokens"] - lo)
            view = memoryview(out[pos : pos + take]).cast("B")
            done = 0
            while done < len(view):
                n = os.preadv(self._fd(i), [view[done:]], lo * size + done)
                if n <= 0:
                    raise OSError(f"{self.root / self.shards[i]['file']} is shorter than its manifest says")
                done += n
            pos += take
            i += 1

    def read(self, a: int, b: int) -> np.ndarray:
        """Tokens ``[a, b)`` of this store (a new array)."""
        out = np.empty(max(0, b - a), dtype=self.dtype)
        self._read_into(a, out)
        return out

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``[len(starts), length]`` int64 windows beginning at ``starts`` (offsets into this store)."""
        if self._tokens is None and len(self) * self.dtype.itemsize <= IN_MEMORY_BYTES:
            self._tokens = self.read(0, len(self))
        if self._tokens is not None:
            return self._tokens[np.asarray(starts)[:, None] + np.arange(length)].astype(np.int64)
        out = np.empty((len(starts), length), dtype=self.dtype)
        for row, s in enumerate(starts.tolist()):
            self._read_into(int(s), out[row])
        return out.astype(np.int64)

    def __getitem__(self, item: slice):
        """Tokens of a slice as an int64 tensor."""
        import torch

        a, b, step = item.indices(len(self))
        return torch.from_numpy(self.read(a, b)[::step].astype(np.int64))

    def to_tensor(self):
        """All tokens as an int64 tensor (for tests and small stores)."""
        return self[:]
