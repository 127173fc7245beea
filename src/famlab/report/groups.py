"""Group runs by their non-seed settings and resolve group specs (``--baseline``, verdict arms).

A run's settings are its Hydra overrides (``+``/``++``/``~`` prefixes stripped; ``seed``, ``hydra.*``
and bookkeeping keys such as ``out_root``, ``run_name``, ``sweep_name``, ``resume`` dropped) completed by its group choices (so defaults are explicit). Keys whose value is
identical in every run are left out of labels; what remains, in order of first appearance, is the
label, e.g. ``optimizer=fam,optimizer.lr=0.003``. A single-group comparison is labelled ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from famlab.report.runs import Run

SEED_KEYS = {"seed"}
# where and under which name a run was written, and how it was resumed: never a compared setting
BOOKKEEPING_KEYS = {
    "out_root",
    "run_name",
    "sweep_name",
    "run_dir",
    "resume",
    "tags",
    "paths",
    "verbose",
    "optuna",
    "optimized_metric",
}
IGNORED_KEYS = SEED_KEYS | BOOKKEEPING_KEYS


def parse_override(item: str) -> tuple[str, str] | None:
    """``'+optimizer.lr=0.003'`` -> ``('optimizer.lr', '0.003')``; None for a bare deletion."""
    key, sep, value = str(item).partition("=")
    key = key.lstrip("+~").strip()
    if not sep or not key:
        return None
    return key, value.strip()


def run_settings(run: Run) -> dict[str, str]:
    """Ordered settings of one run (overrides first, then group choices), seed and hydra removed."""
    settings: dict[str, str] = {}
    for item in run.overrides:
        parsed = parse_override(item)
        if parsed and parsed[0].split(".")[0] not in IGNORED_KEYS and not parsed[0].startswith("hydra"):
            settings[parsed[0]] = parsed[1]
    for key, value in run.choices.items():
        if key not in settings and key not in IGNORED_KEYS and not key.startswith("hydra"):
            settings[key] = str(value)
    return settings


@dataclass
class Group:
    """Runs that share every non-seed setting."""

    label: str
    settings: dict[str, str]
    runs: list[Run] = field(default_factory=list)
    shown: dict[str, str] = field(default_factory=dict)  # the settings that make up the label

    def with_status(self, *statuses: str) -> list[Run]:
        return [r for r in self.runs if r.status in statuses]

    @property
    def finished(self) -> list[Run]:
        """Runs that ran to their end: completed, flagged diverged, or pruned by a search (censored, like diverged)."""
        return self.with_status("completed", "diverged", "pruned")

    @property
    def completed(self) -> list[Run]:
        return self.with_status("completed")


def group_runs(runs: list[Run]) -> list[Group]:
    """Groups in order of first appearance; runs with no known settings share the group ``unknown``.

    A key is in the labels when runs disagree on it: two values, or present in some runs and absent
    (= default) in others whose group choices are known."""
    all_settings = [run_settings(r) for r in runs]
    known = [s for s in all_settings if s]
    # with its group choices known, a run lacking a key ran at that key's default: a distinct value;
    # without them (e.g. only .hydra/overrides.yaml) a missing key is merely unknown
    complete = [s for r, s in zip(runs, all_settings) if s and r.choices]
    order: list[str] = []
    for settings in known:
        order.extend(k for k in settings if k not in order)
    varying = [
        k
        for k in order
        if len({s[k] for s in known if k in s} | ({None} if any(k not in s for s in complete) else set())) > 1
    ]
    groups: dict[tuple, Group] = {}
    for run, settings in zip(runs, all_settings):
        if not settings:
            key, label, shown = ("<unknown>",), "unknown", {}
        else:
            shown = {k: settings[k] for k in varying if k in settings}
            key = tuple(shown.items())
            label = ",".join(f"{k}={v}" for k, v in shown.items()) or "all"
        if key not in groups:
            groups[key] = Group(label=label, settings=dict(settings), shown=shown)
        groups[key].runs.append(run)
    return list(groups.values())


def parse_spec(spec: str) -> dict[str, str]:
    """``'optimizer=adam,optimizer.lr=0.001'`` -> dict; raises on an item without ``=``."""
    out = {}
    for item in str(spec).split(","):
        parsed = parse_override(item)
        if parsed is None:
            raise ValueError(
                f"group spec {spec!r}: {item!r} is not key=value (use a group label or comma-separated key=value pairs)"
            )
        out[parsed[0]] = parsed[1]
    return out


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def matching_groups(spec: str, groups: list[Group]) -> list[Group]:
    """Groups whose label equals ``spec``, else whose settings contain every key=value of ``spec``."""
    exact = [g for g in groups if g.label == spec]
    if exact:
        return exact
    wanted = parse_spec(spec)
    return [g for g in groups if all(k in g.settings and _same(g.settings[k], v) for k, v in wanted.items())]
