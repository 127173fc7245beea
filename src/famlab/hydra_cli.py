"""Hydra composition for the commands that read a run (``famlab evaluate``, ``famlab sample``).

``compose_cli("evaluate", argv, prog)`` composes ``conf/evaluate.yaml`` (its groups, ``+key=``,
``~key``) with the command-line overrides ``argv`` and returns the config; a bad override ends
the process with one line naming it. Hydra's own flags (``--help``, ``--cfg job``, ``--info``,
``--resolve``, ``--package``, ``--hydra-help``) are answered by Hydra itself (a ``hydra.main``
that runs in the current directory and writes nothing), and ``compose_cli`` returns None.
"""

from __future__ import annotations

import re
import sys

from omegaconf import DictConfig

from famlab.paths import CONF_DIR

HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--resolve", "-p", "--package")


def compose_cli(config_name: str, argv: list[str], prog: str) -> DictConfig | None:
    """The composed ``conf/<config_name>.yaml`` (None after Hydra answered a flag); SystemExit on bad input."""
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        unknown = [a for a in flags if a.split("=")[0] not in HYDRA_FLAGS]
        if unknown:
            raise SystemExit(
                f"{prog}: error: unknown option {unknown[0]} (allowed: --help, --cfg job, --info, "
                f"--resolve; settings are key=value overrides)"
            )
        _hydra_flags(config_name, argv, prog)
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=config_name):
            return compose(config_name=config_name, overrides=list(argv))
    except (HydraException, OmegaConfBaseException) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and "hydra.cc" not in line]
        raise SystemExit(f"{prog}: error: {' '.join(lines)[:500]}") from None
    finally:
        GlobalHydra.instance().clear()


def _hydra_flags(config_name: str, argv: list[str], prog: str) -> None:
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def show(cfg: DictConfig) -> None:  # reached only for flags that do not exit (e.g. --info)
        return None

    saved, sys.argv = sys.argv, [prog, *argv]
    try:
        show()
    finally:
        sys.argv = saved


def quote_value(arg: str, key: str) -> str:
    """``key=<text>`` as a quoted Hydra override, so free text keeps its spaces, quotes and ``${``."""
    prefix = f"{key}="
    if not arg.startswith(prefix):
        return arg
    value = arg[len(prefix) :]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return arg  # already a Hydra quoted string
    # Hydra's quoted strings: backslashes are literal except before a quote (and before the closing one)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped).replace("${", "\\${")
    return f"{prefix}'{escaped}'"
