"""``python -m famlab.data.prepare data=<option> [overrides...]``: prepare a corpus ahead of training.

The overrides are composed by Hydra exactly as ``python train.py`` composes them, so the prepared
directory is the one every training run with the same data options reuses (nothing else is
trained or written). Prints the prepared directory and its manifest's counts; exit status 2 with
one ``famlab: error: ...`` line on bad input.
"""
from __future__ import annotations

import sys

USAGE = """usage: python -m famlab.data.prepare data=<option> [data.<key>=<value> ...]

Tokenizes the corpus of data=<option> into memory-mapped shards under data.cache_dir (or reuses
them) and prints where they are. Options: embedded stdlib text_files table_files saved_dataset hub
tiny_shakespeare wikitext2 wikitext103 tinystories fineweb_edu openwebtext enwik8.

example:
  python -m famlab.data.prepare data=text_files data.corpus.path=~/texts/ data.tokenizer.kind=bpe data.num_proc=8
"""


def prepare(overrides: list[str]) -> dict:
    """Compose ``train`` with ``overrides``, prepare its data; returns a summary dict."""
    from famlab import api
    from famlab.build import instantiate
    from famlab.errors import ConfigError

    cfg = api.compose(overrides)
    if "LMDataModule" not in str(cfg.data.get("_target_", "")):
        raise ConfigError(f"data={cfg.hydra.runtime.choices.data} is generated on the fly; nothing to prepare")
    dm = instantiate(cfg.data, "data")
    dm.prepare()
    m = dm.prepared.manifest
    return {"path": str(dm.prepared.path), "reused": dm.prepared.reused, "corpus": m["corpus"],
            "tokenizer": m["tokenizer"]["kind"], "vocab_size": m["tokenizer"]["vocab_size"], "dtype": m["dtype"],
            "splits": {k: v["tokens"] for k, v in m["splits"].items()}, "seconds": m["seconds"]}


def main(argv: list[str] | None = None) -> int:
    from famlab.errors import ConfigError

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["prepare"]:  # `famlab data prepare ...`
        args = args[1:]
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE)
        return 0
    try:
        out = prepare(args)
    except ConfigError as e:
        print(f"famlab: error: {e}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{k} {v:,}" for k, v in out["splits"].items())
    print(f"{'reused' if out['reused'] else 'prepared'} {out['path']}")
    print(f"  {out['corpus']}: {out['tokenizer']} tokenizer (vocab {out['vocab_size']}, {out['dtype']}); "
          f"tokens: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
