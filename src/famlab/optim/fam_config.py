"""FAM's configuration (``conf/optimizer/fam*.yaml``) validated once and turned into FAMOptimizer arguments.

The config has three parts:

* top level: ``lr``, ``weight_decay`` (base values of every group), ``base`` (``sgd`` | ``adam``),
  ``grouping`` (``per_type``: one group per parameter type; ``single``: every parameter in the ``default``
  group, with its row and handler), and for ``base=adam`` only ``beta2`` / ``adam_eps``;
* ``groups``: per-group update table, one row per group of :data:`famlab.optim.groups.GROUP_TABLE`
  (``conv``, ``attention``, ``embedding``, ``norm``, ``default``) with ``alpha`` (momentum, the base of the
  handler rule), ``lr_scale`` and ``wd_scale`` (multipliers of ``lr`` and ``weight_decay``);
* ``analysis``: the frequency analysis, or ``None`` for each group's constant ``alpha`` (ablation). Keys
  ``spectrum`` (``spatial`` | ``temporal``), ``interval`` (optimizer steps between analyses), ``beta``,
  ``eps``, ``fam_start_step``, ``min_size``, ``seed``, ``attention_layout``, ``window`` (temporal only) and
  ``handlers``: per group ``handler`` and ``n_bands``.

Every bad value raises ``ValueError("optimizer.<key>=<value> must be <allowed>")``, which the CLI prints as
one line before anything is written.
"""

from __future__ import annotations

from typing import Any

from famlab.optim.frequency import HANDLERS
from famlab.optim.groups import GROUP_TABLE

CHOICES: dict[str, tuple[str, ...]] = {
    "base": ("sgd", "adam"),
    "grouping": ("per_type", "single"),
    "spectrum": ("spatial", "temporal"),
    "attention_layout": ("high", "legacy"),
    "handler": tuple(sorted(HANDLERS)),
}
ROW_KEYS = ("alpha", "lr_scale", "wd_scale")
HANDLER_KEYS = ("handler", "n_bands")
ANALYSIS_KEYS = (
    "spectrum",
    "interval",
    "beta",
    "eps",
    "fam_start_step",
    "min_size",
    "seed",
    "attention_layout",
    "window",
    "handlers",
)

#: The reference FAM analysis settings (used when ``analysis`` is not given): the spatial spectrum at every step
#: (``interval=1``), the reference smoothing, start step and size threshold, and the handler and ``n_bands`` of
#: each group of :data:`GROUP_TABLE`; the attention handler uses the ``high`` layout (docs/provenance.md §1.2).
REFERENCE_ANALYSIS: dict[str, Any] = dict(
    spectrum="spatial",
    interval=1,
    beta=0.99,
    eps=1e-8,
    fam_start_step=100,
    min_size=256,
    seed=0,
    attention_layout="high",
    handlers={k: {"handler": row["handler"], "n_bands": row["n_bands"]} for k, row in GROUP_TABLE.items()},
)
#: The reference FAM update table: ``alpha``, ``lr_scale`` and ``wd_scale`` of each group of :data:`GROUP_TABLE`.
REFERENCE_GROUPS: dict[str, dict] = {k: {key: row[key] for key in ROW_KEYS} for k, row in GROUP_TABLE.items()}
#: Alias of :data:`REFERENCE_ANALYSIS` (the same object), kept for existing imports.
SEED_ANALYSIS = REFERENCE_ANALYSIS
#: Alias of :data:`REFERENCE_GROUPS` (the same object), kept for existing imports.
SEED_GROUPS = REFERENCE_GROUPS


def _fail(key: str, value, allowed: str):
    raise ValueError(f"optimizer.{key}={value!r} must be {allowed}")


def _number(key: str, value, ok, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        _fail(key, value, allowed)
    return float(value)


def unit(key: str, value) -> float:
    """A value in ``[0, 1)``."""
    return _number(key, value, lambda v: 0 <= v < 1, "a number in [0, 1)")


def positive(key: str, value) -> float:
    return _number(key, value, lambda v: v > 0, "a number > 0")


def learning_rate(value) -> float:
    """``optimizer.lr``, checked here for every optimizer famlab builds (factories, FAMOptimizer, torch classes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"optimizer.lr must be positive, got {value!r}")
    return float(value)


def nonneg(key: str, value) -> float:
    return _number(key, value, lambda v: v >= 0, "a number >= 0")


def integer(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        _fail(key, value, f"an integer >= {low}")
    return int(value)


def choice(key: str, value, options: str) -> str:
    if value not in CHOICES[options]:
        _fail(key, value, f"one of {list(CHOICES[options])}")
    return str(value)


def _mapping(key: str, value) -> dict:
    if hasattr(value, "items"):
        return dict(value.items())
    _fail(key, value, "a mapping")
    return {}


def _table(key: str, table, row_keys: tuple[str, ...]) -> dict[str, dict]:
    """A mapping with exactly the rows of GROUP_TABLE, each with exactly ``row_keys``."""
    table = _mapping(key, table)
    for name in table:
        if name not in GROUP_TABLE:
            _fail(f"{key}.{name}", table[name], f"absent: the groups are {list(GROUP_TABLE)}")
    out = {}
    for name in GROUP_TABLE:
        if name not in table:
            raise ValueError(f"optimizer.{key} needs a row for every group {list(GROUP_TABLE)}; '{name}' is missing")
        row = _mapping(f"{key}.{name}", table[name])
        unknown = sorted(set(row) - set(row_keys))
        missing = [k for k in row_keys if k not in row]
        if unknown or missing:
            raise ValueError(
                f"optimizer.{key}.{name} must have exactly the keys {list(row_keys)}"
                f" (unknown: {unknown}, missing: {missing})"
            )
        out[name] = row
    return out


def group_table(groups) -> dict[str, dict]:
    """Validated ``groups`` table: alpha in [0, 1), lr_scale > 0, wd_scale >= 0."""
    out = {}
    for name, row in _table("groups", groups, ROW_KEYS).items():
        out[name] = dict(
            alpha=unit(f"groups.{name}.alpha", row["alpha"]),
            lr_scale=positive(f"groups.{name}.lr_scale", row["lr_scale"]),
            wd_scale=nonneg(f"groups.{name}.wd_scale", row["wd_scale"]),
        )
    return out


def analysis_settings(analysis) -> dict | None:
    """Validated ``analysis`` node (``None`` = no analysis); ``handlers`` becomes a validated table."""
    if analysis is None:
        return None
    a = _mapping("analysis", analysis)
    unknown = sorted(set(a) - set(ANALYSIS_KEYS))
    if unknown:
        _fail(f"analysis.{unknown[0]}", a[unknown[0]], f"absent: the analysis keys are {list(ANALYSIS_KEYS)}")
    missing = [k for k in ANALYSIS_KEYS if k not in a and k != "window"]
    if missing:
        raise ValueError(f"optimizer.analysis is missing {missing}")
    out = dict(
        spectrum=choice("analysis.spectrum", a["spectrum"], "spectrum"),
        interval=integer("analysis.interval", a["interval"], 1),
        beta=unit("analysis.beta", a["beta"]),
        eps=positive("analysis.eps", a["eps"]),
        fam_start_step=integer("analysis.fam_start_step", a["fam_start_step"], 0),
        min_size=integer("analysis.min_size", a["min_size"], 0),
        seed=integer("analysis.seed", a["seed"], 0),
        attention_layout=choice("analysis.attention_layout", a["attention_layout"], "attention_layout"),
    )
    if out["spectrum"] == "temporal":
        out["window"] = integer("analysis.window", a.get("window", 64), 4)
    elif "window" in a:
        raise ValueError(
            "optimizer.analysis.window applies to optimizer.analysis.spectrum=temporal only "
            "(use optimizer=fam_temporal)"
        )
    handlers = {}
    for name, row in _table("analysis.handlers", a["handlers"], HANDLER_KEYS).items():
        handler = choice(f"analysis.handlers.{name}.handler", row["handler"], "handler")
        low = 2 if handler == "attention" and out["attention_layout"] == "legacy" else 1
        handlers[name] = dict(
            handler=handler, n_bands=integer(f"analysis.handlers.{name}.n_bands", row["n_bands"], low)
        )
    out["handlers"] = handlers
    return out


def fam_arguments(lr, weight_decay, base, groups, analysis, beta2, adam_eps) -> tuple[dict, dict, dict]:
    """``(table, optimizer_kwargs, group_scalars)`` from a FAM config.

    ``table``: the validated per-group rows for :func:`famlab.optim.groups.get_parameter_groups`;
    ``optimizer_kwargs``: FAMOptimizer keyword arguments; ``group_scalars``: ``lr`` and ``weight_decay``.
    The top-level values (``lr``, ``weight_decay``, ``base``, ``beta2``, ``adam_eps``) have the same names
    as FAMOptimizer's arguments and are checked by FAMOptimizer alone; the nested ``groups`` and
    ``analysis`` tables are checked here, so a message names their full key.
    """
    if base == "sgd" and (beta2 is not None or adam_eps is not None):
        key = "beta2" if beta2 is not None else "adam_eps"
        raise ValueError(f"optimizer.{key} applies to optimizer.base=adam only (use optimizer=fam_adam)")
    kwargs: dict[str, Any] = dict(base=base)
    if base == "adam":
        kwargs["beta2"] = 0.999 if beta2 is None else beta2
        kwargs["adam_eps"] = 1e-8 if adam_eps is None else adam_eps
    table = group_table(groups)
    settings = analysis_settings(analysis)
    if settings is None:
        kwargs["analysis"] = False
    else:
        for name, row in settings.pop("handlers").items():
            table[name].update(row)
        kwargs.update(settings, analysis=True)
    return table, kwargs, dict(lr=lr, weight_decay=weight_decay)
