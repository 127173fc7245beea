"""The ``famlab`` console script: ``famlab <subcommand> [args...]``.

Each subcommand is a module entry point ``"module:function"`` imported only when called, so
``famlab compare`` never imports torch and a subcommand whose module is not installed fails with a
clear message. The entry point sees ``sys.argv = ["famlab <subcommand>", *args]`` (what Hydra mains
and argparse mains both read) and its return value becomes the exit status.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, str] = {
    "train": "famlab.train:main",
    "evaluate": "famlab.evaluate:main",
    "sample": "famlab.sample:main",
    "compare": "famlab.compare:main",
    "data": "famlab.data.prepare:main",
}
HELP = {
    "train": "train a configuration or a sweep (-m); Hydra: conf/train.yaml (= python train.py)",
    "evaluate": "score a run at several context lengths; Hydra: conf/evaluate.yaml",
    "sample": "generate text from a run's checkpoint; Hydra: conf/sample.yaml",
    "compare": "tables, CIs, plots and verdicts from run directories (docs/compare.md)",
    "data": "download / tokenize a data option ahead of training",
}
EXAMPLES = """examples:
  famlab train debug=tiny
  famlab train -m optimizer=adamw,fam seed=0,1,2
  famlab evaluate run=outputs/train/runs/<run> eval.context_lengths=[256,512]
  famlab sample run=outputs/train/runs/<run> prompt="The "
  famlab compare outputs/train/multiruns/<sweep> --baseline optimizer=adamw

`famlab <subcommand> --help` lists the subcommand's options."""


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: famlab <subcommand> [args...]", "", "subcommands:"]
    lines += [f"  {name.ljust(width)}  {HELP.get(name, '')}" for name in SUBCOMMANDS]
    return "\n".join([*lines, "", EXAMPLES])


def resolve(name: str):
    """Import and return the entry point of subcommand ``name`` (raises SystemExit with a message)."""
    if name not in SUBCOMMANDS:
        raise SystemExit(f"famlab: unknown subcommand {name!r}\n\n{usage()}")
    module_name, _, func_name = SUBCOMMANDS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise SystemExit(f"famlab {name}: not available in this installation (module {module_name} not found)") from exc
    return getattr(module, func_name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    entry = resolve(argv[0])
    saved, sys.argv = sys.argv, [f"famlab {argv[0]}", *argv[1:]]
    try:
        code = entry()
    finally:
        sys.argv = saved
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
