"""FAM parameter groups: each trainable parameter goes to exactly one handler group.

The reference FAM group table (alpha, handler, n_bands, lr and weight-decay multipliers); ``conf/optimizer/fam.yaml``
carries the same table as configuration (``groups`` and ``analysis.handlers``) and passes it as ``table``:

======== ====== ========= ======= ====== =====
group    alpha  handler   n_bands lr     wd
======== ====== ========= ======= ====== =====
conv     0.90   conv      10      lr     wd
attention 0.92  attention 12      lr     wd
embedding 0.95  embedding 8       0.8 lr 1.5 wd
norm     0.90   default   4       lr     0
default  0.90   default   8       lr     wd
======== ====== ========= ======= ====== =====

Classification uses the *module type* first (norm layers and every 1-D/scalar parameter -> ``norm``, i.e. no
weight decay; ``nn.Embedding`` -> embedding; ``nn.Conv*`` -> conv; anything inside a
:class:`famlab.attention.core.AttentionBase` subclass or ``nn.MultiheadAttention`` -> attention) and falls back
to the lower-cased name keywords of ``NAME_KEYWORDS``, first match wins. There is no ``layer`` keyword, so the
``layers.N`` prefix of a transformer block does not put its weights in the norm group (docs/provenance.md §1.3).
Names come from ``named_parameters`` so tied weights appear once, under their first name.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

GROUP_TABLE: dict[str, dict] = {
    "conv": dict(alpha=0.90, handler="conv", n_bands=10, lr_scale=1.0, wd_scale=1.0),
    "attention": dict(alpha=0.92, handler="attention", n_bands=12, lr_scale=1.0, wd_scale=1.0),
    "embedding": dict(alpha=0.95, handler="embedding", n_bands=8, lr_scale=0.8, wd_scale=1.5),
    "norm": dict(alpha=0.90, handler="default", n_bands=4, lr_scale=1.0, wd_scale=0.0),
    "default": dict(alpha=0.90, handler="default", n_bands=8, lr_scale=1.0, wd_scale=1.0),
}

NAME_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("conv", ("conv", "cnn")),
    (
        "attention",
        (
            "attention",
            "attn",
            "mha",
            "self_attn",
            "cross_attn",
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "out_proj",
            "qkv",
        ),
    ),
    ("embedding", ("embed", "token", "wte", "wpe", "tok_emb", "pos_emb")),
    ("norm", ("norm", "batch", "ln_")),
)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
)


def _attention_types() -> tuple[type, ...]:
    from famlab.attention.core import AttentionBase

    return AttentionBase, nn.MultiheadAttention


def classify_by_name(name: str) -> str:
    """Group of a parameter from its lower-cased name alone (first keyword match wins, else ``default``)."""
    lowered = name.lower()
    for group, keywords in NAME_KEYWORDS:
        if any(kw in lowered for kw in keywords):
            return group
    return "default"


def classify(name: str, param: nn.Parameter, owners: list[nn.Module]) -> str:
    """Group of ``param`` given its owning module chain ``owners`` (outermost first, direct owner last)."""
    owner = owners[-1] if owners else None
    if isinstance(owner, nn.Embedding):
        return "embedding"
    if isinstance(owner, _NORM) or param.ndim < 2:
        return "norm"
    if isinstance(owner, _CONV):
        return "conv"
    if any(isinstance(m, _attention_types()) for m in owners):
        return "attention"
    return classify_by_name(name)


def _owner_chain(model: nn.Module, name: str) -> list[nn.Module]:
    parts, chain, module = name.split(".")[:-1], [], model
    for part in parts:
        module = getattr(module, part)
        chain.append(module)
    return chain


def get_parameter_groups(
    model: nn.Module,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    table: dict[str, dict] | None = None,
    single: bool = False,
) -> list[dict]:
    """Handler groups for :class:`famlab.optim.fam.FAMOptimizer`.

    ``table`` maps every group name of :data:`GROUP_TABLE` to a row with ``alpha``, ``lr_scale`` and
    ``wd_scale`` and, optionally, ``handler`` and ``n_bands`` (default: :data:`GROUP_TABLE`). Returns
    non-empty dicts with ``params``, ``names``, ``group`` (table key), ``alpha``, ``lr = lr * lr_scale``,
    ``weight_decay = weight_decay * wd_scale`` and the row's ``handler`` / ``n_bands`` where it has them;
    parameters with ``requires_grad=False`` are skipped. ``single=True`` puts every parameter in one
    ``default`` group (the ablation "no per-type handling": one handler, one row, one batched update).
    """
    table = GROUP_TABLE if table is None else table
    buckets: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = "default" if single else classify(name, param, _owner_chain(model, name))
        if key not in buckets:
            row = table[key]
            buckets[key] = dict(
                params=[],
                names=[],
                group=key,
                alpha=row["alpha"],
                lr=lr * row["lr_scale"],
                weight_decay=weight_decay * row["wd_scale"],
            )
            buckets[key].update({k: row[k] for k in ("handler", "n_bands") if k in row})
        buckets[key]["params"].append(param)
        buckets[key]["names"].append(name)
    return [buckets[k] for k in GROUP_TABLE if k in buckets]


def add_handlers_to_groups(params: Iterable) -> list[dict]:
    """Normalise user ``params`` (tensors or dicts) into groups that all carry ``handler`` and ``group``.

    Plain tensors -> one group with the ``default`` handler; dicts without ``handler`` -> the handler of the
    majority keyword of their ``names`` (``default`` if they have none); a group without ``group`` is named
    ``group{i}``.
    """
    params = list(params)
    if not params:
        raise ValueError("FAMOptimizer got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]
    groups = []
    for i, group in enumerate(params):
        group = dict(group)
        group["params"] = list(group["params"]) if not isinstance(group["params"], nn.Parameter) else [group["params"]]
        if "handler" not in group:
            kinds = [classify_by_name(n) for n in group.get("names", [])]
            kind = max(set(kinds), key=kinds.count) if kinds else "default"
            group["handler"] = GROUP_TABLE[kind]["handler"]
        group.setdefault("group", f"group{i}")
        group.setdefault("names", [f"{group['group']}.{j}" for j in range(len(group["params"]))])
        if len(group["names"]) != len(group["params"]):
            raise ValueError(
                f"param group {group['group']!r}: {len(group['names'])} names for {len(group['params'])} params"
            )
        groups.append(group)
    return groups


def format_group_table(groups: list[dict]) -> str:
    """Human-readable table: group, handler, alpha, n_bands, lr, wd, #params, #elements, names."""
    lines = [f"{'group':<10} {'handler':<9} {'alpha':>5} {'bands':>5} {'lr':>9} {'wd':>7} {'n':>3} {'numel':>9}  names"]
    for g in groups:
        numel = sum(p.numel() for p in g["params"])
        names = ", ".join(g["names"][:4]) + (" ..." if len(g["names"]) > 4 else "")
        lines.append(
            f"{g['group']:<10} {g.get('handler', '-'):<9} {g['alpha']:>5.2f} {g.get('n_bands', 0):>5d} {g['lr']:>9.2e} "
            f"{g['weight_decay']:>7.3g} {len(g['params']):>3d} {numel:>9d}  {names}"
        )
    return "\n".join(lines)
