"""Pre-registered verdict rules: "supported", "not supported at this scale" or "inconclusive".

A rule (``config.yaml: experiment_meta.verdict``, ``summary.json: verdict_rule`` or ``--verdict``)::

    {"claim": "FAM reaches the target in fewer steps than Adam", "method": "optimizer=fam",
     "baseline": "optimizer=adam", "ablation": "optimizer=fam_constant",   # ablation optional
     "metric": "steps_to_target", "direction": "lower", "min_effect": 0.15,
     "effect": "relative"}                                                  # or "absolute"

Improvement I = baseline - method (direction lower) or method - baseline (higher), with a Welch 95%
CI from the per-seed values (steps/time to target add the eval-grid variance Δ²/12, Δ = the eval
interval the crossing fell in, so seeds that all cross at the same eval are not "exact"); relative
effects divide I and its CI by |mean(baseline)|.

- supported: n >= 2 in every arm, CI(I vs baseline) lies above 0, mean I >= min_effect, every method
  run reached the target (for ``*_to_target``), and, if an ablation is named, CI(I vs ablation) > 0.
- not supported at this scale: the upper CI bound of I vs the baseline, or of I vs the ablation, is
  <= 0 or < min_effect: even the optimistic end misses the claimed effect (for the ablation: the
  novelty cannot account for the claimed effect; "beats" is decided first, so a method whose CI vs
  the ablation is above 0 but below min_effect, and which beats the baseline by more, is supported).
- inconclusive: anything else, including n < 2, missing arms and invalid rules. With min_effect = 0
  an ablation indistinguishable from the method is inconclusive (no equivalence margin was stated).

A spec matching several groups (an LR sweep) resolves to the arm's best group on the rule's metric,
i.e. each arm at its own tuned setting; the chosen group is reported. Where the metric cannot rank
them (for ``*_to_target``: no group reached the target; or a tie) the best mean best_val_loss
decides, and the report says so. For ``*_to_target`` metrics a
run that never reached the target counts with its budget (last step / wall time), a lower bound of
its true cost: this understates an unreached baseline's cost (conservative for "supported"), and a
method run that never reached the target blocks "supported".
"""

from __future__ import annotations

import json
import math

from famlab.report.groups import matching_groups
from famlab.report.power import MAX_SEEDS, decision_distance, seeds_to_decide
from famlab.report.results import GroupStats, RunResult, describe_scale, scale_line
from famlab.report.runs import Run
from famlab.report.stats import welch_t_test

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported at this scale", "inconclusive"
HIGHER_IS_BETTER = ("tokens_per_s", "eval_accuracy@")


def default_direction(metric: str) -> str:
    return "higher" if metric.startswith(HIGHER_IS_BETTER) else "lower"


def validate_rule(rule: dict) -> dict:
    """Normalised copy of ``rule``; raises ValueError naming the bad key."""
    if not isinstance(rule, dict):
        raise ValueError(f"verdict rule must be a mapping, got {type(rule).__name__}")
    for key in ("method", "baseline", "metric"):
        if not rule.get(key):
            raise ValueError(f"verdict rule needs '{key}' (got keys {sorted(rule)})")
    out = dict(rule)
    out.setdefault("claim", f"{rule['method']} beats {rule['baseline']} on {rule['metric']}")
    out["direction"] = str(out.get("direction") or default_direction(str(rule["metric"])))
    if out["direction"] not in ("lower", "higher"):
        raise ValueError(f"verdict rule 'direction' must be 'lower' or 'higher', got {out['direction']!r}")
    out["effect"] = str(out.get("effect") or "relative")
    if out["effect"] not in ("relative", "absolute"):
        raise ValueError(f"verdict rule 'effect' must be 'relative' or 'absolute', got {out['effect']!r}")
    out["min_effect"] = float(out.get("min_effect") or 0.0)
    return out


def collect_rules(runs: list[Run]) -> list[dict]:
    """Distinct rules stated in the runs' configs and summaries (a dict or a list of dicts each)."""
    found, seen = [], set()
    for run in runs:
        for source in (run.experiment_meta.get("verdict"), run.summary.get("verdict_rule")):
            for rule in source if isinstance(source, list) else [source] if source else []:
                key = json.dumps(rule, sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    found.append(rule)
    return found


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _pick(spec: str, stats: list[GroupStats], metric: str, direction: str) -> tuple[GroupStats | None, str]:
    """The group ``spec`` names; among several (an LR sweep) the best on ``metric``, with a note.

    Where the metric cannot tell the groups apart (no group reached the target for ``*_to_target``,
    or the best means tie) the choice falls to the best mean best_val_loss, and the note says so
    (a plain ``min`` would take the first group of a tie, e.g. the worst lr of a sweep)."""
    groups = matching_groups(spec, [s.group for s in stats])
    arms = [s for s in stats if s.group in groups and s.values(metric, censored=True)]
    if not arms:
        return None, f"no finished runs match {spec!r}"
    if len(arms) == 1:
        return arms[0], ""
    sign = 1.0 if direction == "lower" else -1.0
    by_loss = lambda s: (
        math.inf
        if not s.values("best_val_loss")
        # noqa: E731
        else (-1.0 if s.maximize else 1.0) * _mean(s.values("best_val_loss"))
    )
    candidates = arms
    if metric.endswith("_to_target"):
        candidates = [s for s in arms if s.reached > 0]
    if candidates:
        scores = {id(s): sign * _mean(s.values(metric, True)) for s in candidates}
        top = min(scores.values())
        tied = [s for s in candidates if math.isclose(scores[id(s)], top, rel_tol=1e-9, abs_tol=1e-12)]
        if len(tied) == 1:
            return tied[0], (f"{spec!r} matched {len(arms)} groups; using the best on {metric}: {tied[0].label}")
        best = min(tied, key=by_loss)
        return best, (
            f"{spec!r} matched {len(arms)} groups; {len(tied)} tie on {metric}, using the "
            f"best of those on best_val_loss: {best.label}"
        )
    best = min(arms, key=by_loss)
    return best, (
        f"{spec!r} matched {len(arms)} groups, none of which reached the target; "
        f"{metric} cannot rank them, using the best on best_val_loss: {best.label}"
    )


def compare_arms(method: GroupStats, other: GroupStats, rule: dict, need_mean_effect: bool) -> dict:
    """Improvement of ``method`` over ``other`` with CI and its outcome (better / not better / unclear).

    better: CI above 0 (and mean >= min_effect when ``need_mean_effect``); not better: upper CI bound
    <= 0 or < min_effect."""
    min_effect = rule["min_effect"]
    metric, lower = rule["metric"], rule["direction"] == "lower"
    a, b = method.values(metric, censored=True), other.values(metric, censored=True)
    test = welch_t_test(a, b, resolution_a=method.resolution(metric), resolution_b=other.resolution(metric))
    sign = -1.0 if lower else 1.0
    imp, lo, hi = sign * test.diff, *sorted((sign * test.lo, sign * test.hi))
    scale = abs(sum(b) / len(b)) if rule["effect"] == "relative" and b else 1.0
    scale = scale if scale > 0 else float("nan")
    rel, rel_lo, rel_hi = imp / scale, lo / scale, hi / scale
    if len(a) < 2 or len(b) < 2 or math.isnan(rel_lo):
        outcome = "unclear"
    elif rel_lo > 0 and (rel >= min_effect or not need_mean_effect):
        outcome = "better"
    elif rel_hi <= 0 or rel_hi < min_effect:
        outcome = "not better"
    else:
        outcome = "unclear"
    seeds = None
    if outcome == "unclear" and len(a) >= 2 and len(b) >= 2:
        distance = decision_distance(rel, min_effect, need_mean_effect)
        seeds = seeds_to_decide(
            a, b, distance, scale, resolution_a=method.resolution(metric), resolution_b=other.resolution(metric)
        )
    return {
        "against": other.label,
        "n_method": len(a),
        "n_other": len(b),
        "improvement": rel,
        "ci": [rel_lo, rel_hi],
        "p": test.p,
        "df": test.df,
        "effect": rule["effect"],
        "outcome": outcome,
        "ci_width": rel_hi - rel_lo,
        "seeds_to_decide": seeds,
    }


def evaluate_rule(rule: dict, stats: list[GroupStats], scale: str) -> dict:
    """Apply one rule to the group statistics; never raises (an invalid rule is inconclusive)."""
    result = {"rule": rule, "scale": scale, "verdict": INCONCLUSIVE, "reasons": [], "comparisons": {}}
    try:
        rule = validate_rule(rule)
        result["rule"] = rule
        metric = rule["metric"]
        RunResult(run=None).value(metric)  # raises on an unknown metric name
        arms = {}
        for role in ("method", "baseline", "ablation"):
            if rule.get(role):
                arms[role], note = _pick(str(rule[role]), stats, metric, rule["direction"])
                if note:
                    result["reasons"].append(note)
    except ValueError as exc:
        result["reasons"].append(f"invalid rule: {exc}")
        return result
    if any(v is None for v in arms.values()):
        missing = ", ".join(k for k, v in arms.items() if v is None)
        result["reasons"].append(f"missing arm(s): {missing}")
        return result
    result["scale"] = scale_line(describe_scale([r for a in arms.values() for r in a.group.runs]))
    method = arms["method"]
    base = compare_arms(method, arms["baseline"], rule, need_mean_effect=True)
    result["comparisons"]["baseline"] = base
    ablation = compare_arms(method, arms["ablation"], rule, need_mean_effect=False) if "ablation" in arms else None
    if ablation:
        result["comparisons"]["ablation"] = ablation
    if metric.endswith("_to_target") and method.reached < method.decided:
        result["reasons"].append(
            f"{method.decided - method.reached}/{method.decided} method run(s) "
            "never reached the target (counted at their budget; blocks 'supported')"
        )
        if base["outcome"] == "better":
            base["outcome"] = "unclear"
    if base["outcome"] == "not better" or (ablation and ablation["outcome"] == "not better"):
        result["verdict"] = NOT_SUPPORTED
    elif base["outcome"] == "better" and (ablation is None or ablation["outcome"] == "better"):
        result["verdict"] = SUPPORTED
    for name, cmp in result["comparisons"].items():
        if cmp["n_method"] < 2 or cmp["n_other"] < 2:
            result["reasons"].append(f"fewer than 2 seeds against the {name}")
    return result


def format_verdict(result: dict) -> str:
    """One paragraph: claim, verdict, effect with CI and p for each comparison, scale line."""
    rule = result["rule"] if isinstance(result["rule"], dict) else {}
    lines = [f"**{rule.get('claim', 'claim')}**: {result['verdict']}"]
    for name, cmp in result["comparisons"].items():
        unit = "%" if cmp["effect"] == "relative" else ""
        k = 100.0 if unit else 1.0
        lines.append(
            f"- vs {name} `{cmp['against']}` on {rule.get('metric')}: improvement "
            f"{cmp['improvement'] * k:+.3g}{unit} (95% CI {cmp['ci'][0] * k:+.3g}{unit} .. "
            f"{cmp['ci'][1] * k:+.3g}{unit}), Welch p={cmp['p']:.3g}, n={cmp['n_method']} "
            f"vs {cmp['n_other']} -> {cmp['outcome']}"
        )
        if cmp["outcome"] == "unclear" and cmp.get("ci_width") is not None and math.isfinite(cmp["ci_width"]):
            needed = cmp.get("seeds_to_decide")
            need = f"about {needed} seeds per arm" if needed else f"more than {MAX_SEEDS} seeds per arm"
            lines.append(
                f"  - CI width {cmp['ci_width'] * k:.3g}{unit}; at this effect and spread {need} would decide it"
            )
    lines.extend(f"- note: {r}" for r in result["reasons"])
    lines.append(f"- {result['scale']}")
    return "\n".join(lines)
