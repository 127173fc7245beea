"""``python -m famlab.data.prepare data=<option> [overrides...]``: prepare a corpus ahead of training.

The overrides are composed by Hydra exactly as ``python train.py`` composes them, so the prepared
directory is the one every training run with the same data options reuses (nothing else is
trained or written). Prints the prepared directory and its manifest's counts; exit status 2 with
one ``famlab: error: ...`` line on bad input.
"""

from __future__ import annotations

import sys

USAGE = """usage: python -m famlab.data.prepare data=<option> [data.<key>=<value> ...]

Tokenizes the corpus of data=<option> into token shards under data.cache_dir (or reuses
them) and prints where they are. Options: embedded stdlib text_files table_files saved_dataset hub
tiny_shakespeare wikitext2 wikitext103 tinystories fineweb_edu openwebtext enwik8.

example:
  python -m famlab.data.prepare data=text_files data.corpus.path=~/texts/ data.tokenizer.kind=bpe data.num_proc=8
"""


def compose(overrides: list[str]):
    """``conf/train.yaml`` composed with ``overrides`` (Hydra's compose API; imports no torch)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from famlab.paths import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def prepare(overrides: list[str]) -> dict:
    """Compose ``train`` with ``overrides``, prepare its data; returns a summary dict."""
    from omegaconf import OmegaConf

    from famlab.build import instantiate
    from famlab.data.preparation import SHARD_TOKENS, prepare_corpus
    from famlab.errors import ConfigError

    data = compose(overrides).data
    if not data.get("corpus"):  # no corpus to tokenize: the data module generates its sequences
        raise ConfigError(f"data: {data.get('_target_')} is generated on the fly; there is nothing to prepare")
    corpus = instantiate(data.corpus, "data")
    tok_cfg = OmegaConf.to_container(data.tokenizer, resolve=True) if data.get("tokenizer") else None
    p = prepare_corpus(
        corpus,
        tok_cfg,
        data.get("cache_dir"),
        data.get("val_fraction", 0.1),
        data.get("max_tokens"),
        data.get("num_proc"),
        data.get("shard_tokens", SHARD_TOKENS),
        progress=None,
    )
    m = p.manifest
    return {
        "path": str(p.path),
        "reused": p.reused,
        "corpus": m["corpus"],
        "tokenizer": m["tokenizer"]["kind"],
        "vocab_size": m["tokenizer"]["vocab_size"],
        "dtype": m["dtype"],
        "splits": {k: v["tokens"] for k, v in m["splits"].items()},
        "seconds": m["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    from famlab.errors import ConfigError

    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["prepare"]:  # `famlab data prepare ...`
        args = args[1:]
    if any(a in ("-h", "--help", "help") for a in args):
        print(USAGE)
        return 0
    from hydra.errors import HydraException

    try:
        out = prepare(args)
    except ConfigError as e:
        print(f"famlab: error: {e}", file=sys.stderr)
        return 2
    except HydraException as e:  # unknown option or key: Hydra's own message
        print(f"famlab data prepare: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k} {v:,}" for k, v in out["splits"].items())
    print(f"{'reused' if out['reused'] else 'prepared'} {out['path']}")
    print(
        f"  {out['corpus']}: {out['tokenizer']} tokenizer (vocab {out['vocab_size']}, {out['dtype']}); tokens: {splits}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
