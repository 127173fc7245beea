"""Lightning data modules: a tokenized corpus (``LMDataModule``) or the synthetic recall task
(``RecallDataModule``). Both yield dicts ``{"input": [B, T], "target": [B, T]}`` and expose
``tokenizer``, ``vocab_size``, ``meta`` (for the run summary) and ``eval_batches(context, n)``
(fixed windows at any context length, used by validation and length-generalisation evals).
"""

from __future__ import annotations

import math
import sys

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from famlab.data.preparation import SHARD_TOKENS, prepare_corpus
from famlab.data.synthetic import RecallTask
from famlab.data.tokenizers import ByteTokenizer
from famlab.data.windows import StepWindows, sample_windows, step_generator
from famlab.errors import ConfigError

VAL_SEED = 1_234_567  # validation windows are the same for every seed and variant


def _positive(key: str, value) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def loader_generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: creating its iterator draws a base seed from it, not from the
    global torch RNG (which a resumed run has just restored and dropout draws from next)."""
    return torch.Generator().manual_seed(int(seed))


class StepStreamMixin:
    """Checkpoints the position of the training stream (batches consumed) so resume continues it."""

    start_batch = 0

    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        return {"batches_seen": trainer.global_step * trainer.accumulate_grad_batches if trainer else 0}

    def load_state_dict(self, state: dict) -> None:
        self.start_batch = int(state.get("batches_seen", 0))

    def _stream(self, make_batch) -> DataLoader:
        self.train_windows = StepWindows(make_batch, self.batch_size, self.seed)
        self.train_windows.start_step = self.start_batch
        return DataLoader(self.train_windows, batch_size=None, num_workers=0, generator=loader_generator(self.seed))


class LMDataModule(StepStreamMixin, pl.LightningDataModule):
    """Next-token prediction on a prepared corpus (``famlab.data.preparation``): training and
    validation windows are read from its token shards on disk. Without a named validation split
    the last ``val_fraction`` of tokens is validation."""

    def __init__(
        self,
        corpus,
        tokenizer: dict | None = None,
        context: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        val_batches: int = 16,
        seed: int = 0,
        cache_dir: str = "~/.cache/famlab",
        max_tokens: int | None = None,
        streaming: bool = False,
        num_proc: int | None = None,
        shard_tokens: int = SHARD_TOKENS,
    ):
        super().__init__()
        self.corpus, self.tok_cfg = corpus, dict(tokenizer or {"kind": "bytes"})
        self.context = _positive("model.context", context)
        self.batch_size = _positive("data.batch_size", batch_size)
        self.val_batches = _positive("data.val_batches", val_batches)
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction, self.seed, self.cache_dir = val_fraction, seed, cache_dir
        self.max_tokens, self.streaming, self.num_proc, self.shard_tokens = (
            max_tokens,
            streaming,
            num_proc,
            shard_tokens,
        )
        self.tokenizer = None
        self.train_tokens = self.val_tokens = None
        self.prepared = None
        self.meta: dict = {}

    def prepare(self) -> LMDataModule:
        """Prepare the corpus (or reuse its prepared directory) and open the splits; idempotent.
        Raises ConfigError."""
        if self.train_tokens is not None:
            return self
        prepared = prepare_corpus(
            self.corpus,
            self.tok_cfg,
            self.cache_dir,
            self.val_fraction,
            self.max_tokens,
            self.num_proc,
            self.shard_tokens,
        )
        train, val = prepared.split("train"), prepared.split("val")
        for split, t in (("training", train), ("validation", val)):
            if t.numel() <= self.context + 1:
                raise ConfigError(
                    f"model.context={self.context} is longer than the {split} split of data "
                    f"{self.corpus.name} ({t.numel()} tokens); lower model.context or add text"
                )
        self.prepared, self.tokenizer = prepared, prepared.tokenizer
        self.train_tokens, self.val_tokens = train, val
        m = prepared.manifest
        self.meta = {
            "corpus": m["corpus"],
            "fingerprint": m["fingerprint"],
            "python": m["python"],
            "tokenizer": self.tokenizer.kind,
            "vocab_size": self.tokenizer.vocab_size,
            "train_tokens": train.numel(),
            "val_tokens": val.numel(),
            "unigram_loss": m["unigram_loss"],
            "chars_per_token": m["chars_per_token"],
            "prepared": str(prepared.path),
            "dtype": m["dtype"],
            "max_tokens": m["max_tokens"],
            "truncated": m["truncated"],
        }
        return self

    @property
    def vocab_size(self) -> int:
        return self.prepare().tokenizer.vocab_size

    def bpc_factor(self) -> float:
        """Multiply a per-token loss (nats) by this to get bits per character."""
        return 1.0 / (math.log(2) * self.meta.get("chars_per_token", 1.0))

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    def train_dataloader(self):
        return self._stream(lambda g, b: sample_windows(self.train_tokens, self.context, b, g))

    def eval_batches(self, context: int, n: int, batch_size: int | None = None) -> list[dict]:
        """``n`` fixed validation batches of length ``context`` (seed-independent)."""
        self.prepare()
        if self.val_tokens.numel() <= context + 1:
            raise ConfigError(
                f"eval context {context} is longer than the validation split ({self.val_tokens.numel()} tokens)"
            )
        g = step_generator(VAL_SEED, 0)
        return [sample_windows(self.val_tokens, context, batch_size or self.batch_size, g) for _ in range(n)]

    def val_dataloader(self):
        return DataLoader(
            self.eval_batches(self.context, self.val_batches),
            batch_size=None,
            num_workers=0,
            generator=loader_generator(self.seed),
        )


class RecallDataModule(StepStreamMixin, pl.LightningDataModule):
    """The synthetic MQAR task (``data=recall``): fresh sequences every step, accuracy as metric."""

    def __init__(
        self,
        num_keys: int = 256,
        num_values: int = 64,
        context: int = 64,
        batch_size: int = 32,
        val_batches: int = 8,
        seed: int = 0,
    ):
        super().__init__()
        self.task = RecallTask(_positive("data.num_keys", num_keys), _positive("data.num_values", num_values))
        self.context = _positive("model.context", context)
        if self.context < 8:
            raise ConfigError(f"model.context must be >= 8 for data=recall, got {self.context}")
        self.batch_size = _positive("data.batch_size", batch_size)
        self.val_batches = _positive("data.val_batches", val_batches)
        self.seed = seed
        self.tokenizer = _RecallTokenizer(self.task)
        self.meta = {
            "corpus": "mqar",
            "fingerprint": self.task.fingerprint,
            "python": sys.version.split()[0],
            "tokenizer": "recall",
            "vocab_size": self.task.vocab_size,
            "unigram_loss": math.log(self.task.num_values),
        }

    def prepare(self) -> RecallDataModule:
        return self

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def bpc_factor(self) -> float:
        return 1.0 / math.log(2)

    def train_dataloader(self):
        return self._stream(lambda g, b: self.task.batch(self.context, b, g))

    def eval_batches(self, context: int, n: int, batch_size: int | None = None) -> list[dict]:
        g = step_generator(VAL_SEED, 0)
        return [self.task.batch(context, batch_size or self.batch_size, g) for _ in range(n)]

    def val_dataloader(self):
        return DataLoader(
            self.eval_batches(self.context, self.val_batches),
            batch_size=None,
            num_workers=0,
            generator=loader_generator(self.seed),
        )


class _RecallTokenizer(ByteTokenizer):
    """Token ids printed as ``k12``/``v3`` words; only used for sampling and reports."""

    kind = "recall"

    def __init__(self, task: RecallTask):
        self.task = task

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) + (self.task.num_keys if w[0] == "v" else 0) for w in text.split()]

    def decode(self, ids) -> str:
        k = self.task.num_keys
        return " ".join(f"k{i}" if i < k else f"v{i - k}" for i in map(int, ids))

    def state(self) -> dict:
        return {"kind": "recall", "num_keys": self.task.num_keys, "num_values": self.task.num_values}
