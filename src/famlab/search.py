"""Hyperparameter search with Optuna: search spaces from Hydra sweep syntax, the study's storage,
and reopening a trial inside a training job (for pruning).

Search spaces use Hydra's override grammar, as in ``hydra.sweeper.params``:
``choice(a, b)`` -> categorical, ``range(1, 8)`` -> integers (step kept), ``interval(lo, hi)``
-> a float, ``tag(int, interval(lo, hi))`` -> an integer, ``tag(log, interval(lo, hi))`` -> log-uniform.
The study lives in ``sqlite:///<sweep dir>/optuna.db`` unless a storage URL is given, so a search
that is killed and started again with the same ``sweep_name`` continues the same study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from famlab.errors import ConfigError


def distribution(key: str, expression: str):
    """The Optuna distribution of one ``key: expression`` entry of ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    try:
        (override,) = OverridesParser.create().parse_overrides([f"{key}={expression}"])
    except Exception as e:  # noqa: BLE001 - the grammar's message is long; one line is enough
        raise ConfigError(
            f"hydra.sweeper.params.{key}: cannot parse {expression!r} "
            f"({str(e).splitlines()[0]}); use choice(...), range(...), interval(...)"
        ) from None
    value = override.value()
    log = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([v for v in value.list])
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(int(start), int(stop) - 1, step=int(step), log=log and step == 1)
        return FloatDistribution(float(start), float(stop), step=float(step))
    if isinstance(value, IntervalSweep):
        if "int" in value.tags:  # Hydra reads interval ends as floats: tag(int, interval(1, 8)) asks for integers
            return IntDistribution(int(value.start), int(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ConfigError(
        f"hydra.sweeper.params.{key}={expression!r} is not a search space; "
        f"use choice(...), range(...) or interval(...) (tag(log, ...) for log scale)"
    )


def search_space(params: dict[str, Any] | None) -> dict:
    """``{key: distribution}`` for every entry of ``hydra.sweeper.params``."""
    return {str(k): distribution(str(k), str(v)) for k, v in (params or {}).items()}


def override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's grammar (strings quoted)."""
    if isinstance(value, str):
        return f"{key}='{value}'"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def default_storage(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def reopen_trial(storage: str, study_name: str, number: int, pruner=None):
    """The running trial ``number`` of the study, as a live ``optuna.Trial`` that can report and, with
    ``pruner`` (an Optuna pruner; None never prunes), decide whether to prune."""
    import optuna

    study = optuna.load_study(
        study_name=study_name, storage=storage, pruner=pruner if pruner is not None else optuna.pruners.NopPruner()
    )
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    return optuna.trial.Trial(study, trial_id)
