"""FAM's parameter update of one param group, given each tensor's momentum (foreach ops, no host sync).

For the parameters ``p_i`` with gradients ``g_i`` and momenta ``m_i`` (``exp_avg``, same shape as ``p_i``),
with ``a_i`` the tensor's momentum: the 0-dim float32 ``alpha_eff`` state for tensors in ``adaptive``, else
the group's constant ``alpha``:

* ``base="sgd"``: coupled L2, ``m_i <- a_i * m_i + (1 - a_i) * (g_i + wd * p_i)``; ``p_i <- p_i - lr * m_i``;
* ``base="adam"``: ``m_i <- a_i * m_i + (1 - a_i) * g_i``; decoupled decay ``p_i <- p_i * (1 - lr*wd)``; ``v_i <- beta2*v_i + (1-beta2)*g_i^2``;
  ``prod_i <- prod_i * a_i`` (``beta1_prod``); ``p_i <- p_i - lr * (m_i/bc1) / (sqrt(v_i)/sqrt(bc2) + eps)``
  with ``bc1 = 1 - prod_i`` (exact for a time-varying beta1) and ``bc2 = 1 - beta2^step``.
"""

from __future__ import annotations

import math

import torch


def lerp_weights(ms, alpha: float, adaptive: dict[int, torch.Tensor]) -> list:
    """``1 - a`` per tensor: a 0-dim tensor (dtype of its momentum) where ``adaptive`` gives ``a``, else the float
    ``1 - alpha``."""
    weights: list = [1.0 - alpha] * len(ms)
    if adaptive:
        ada = list(adaptive)
        for i, w in zip(ada, torch.stack([adaptive[i] for i in ada]).neg_().add_(1.0).unbind(0)):
            weights[i] = w if w.dtype == ms[i].dtype else w.to(ms[i].dtype)
    return weights


def momentum_update(ms, grads, weights: list, params=None, wd: float = 0.0) -> None:
    """``m <- lerp(m, g + wd*p, w)`` for the weights of :func:`lerp_weights` (foreach ops).

    The coupled L2 term is added to the momentum (``m <- lerp(m, g, w) + w*wd*p``) rather than to a decayed
    copy of the gradient: the same update without allocating a gradient-sized tensor per step."""
    fixed = [i for i, w in enumerate(weights) if not isinstance(w, torch.Tensor)]
    ada = [i for i, w in enumerate(weights) if isinstance(w, torch.Tensor)]
    if fixed:
        torch._foreach_lerp_([ms[i] for i in fixed], [grads[i] for i in fixed], weights[fixed[0]])
        if wd != 0:
            torch._foreach_add_([ms[i] for i in fixed], [params[i] for i in fixed], alpha=weights[fixed[0]] * wd)
    if ada:
        torch._foreach_lerp_([ms[i] for i in ada], [grads[i] for i in ada], [weights[i] for i in ada])
        if wd != 0:
            torch._foreach_addcmul_([ms[i] for i in ada], [params[i] for i in ada], [weights[i] for i in ada], value=wd)


def sgd_update(params, grads, ms, weights: list, lr: float, wd: float, per_tensor: bool) -> None:
    """``m <- lerp(m, g, w) + w*wd*p``; ``p <- p - lr*m``. ``per_tensor``: the three ops tensor by tensor, so each
    tensor's momentum and parameter are still in cache for the second and third op (on a CPU one pass over
    memory instead of three); otherwise foreach ops over all tensors (one kernel launch per op on a GPU)."""
    if not per_tensor:
        momentum_update(ms, grads, weights, params, wd)
        torch._foreach_add_(params, ms, alpha=-lr)
        return
    for p, g, m, w in zip(params, grads, ms, weights):
        m.lerp_(g, w)
        if wd != 0 and isinstance(w, float):
            m.add_(p, alpha=w * wd)
        elif wd != 0:
            m.addcmul_(p, w, value=wd)
        p.add_(m, alpha=-lr)


def apply_update(
    group: dict,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    states: list[dict],
    adaptive: dict[int, torch.Tensor],
    *,
    base: str,
    beta2: float,
    adam_eps: float,
) -> None:
    """Momentum and parameter update of one group (see the module docstring); ``adaptive`` maps list indices to
    their 0-dim ``alpha_eff``."""
    lr, alpha, wd = group["lr"], float(group["alpha"]), group["weight_decay"]
    ms = [st["exp_avg"] for st in states]
    weights = lerp_weights(ms, alpha, adaptive)
    if base == "sgd":
        sgd_update(params, grads, ms, weights, lr, wd, per_tensor=all(p.device.type == "cpu" for p in params))
        return
    momentum_update(ms, grads, weights)
    fixed = [i for i in range(len(params)) if i not in adaptive]
    ada = list(adaptive)
    vs, prods = [st["exp_avg_sq"] for st in states], [st["beta1_prod"] for st in states]
    if wd != 0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
    if fixed:
        torch._foreach_mul_([prods[i] for i in fixed], alpha)
    if ada:
        torch._foreach_mul_([prods[i] for i in ada], [adaptive[i] for i in ada])
    # update = lr * (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) = lr * m / (sqrt(v) * bc1/sqrt(bc2) + eps*bc1)
    bias1 = torch._foreach_neg(prods)
    torch._foreach_add_(bias1, 1.0)  # bc1 = 1 - prod_t beta1_t (0-dim tensors)
    eps_scaled = torch._foreach_mul(bias1, adam_eps)
    torch._foreach_mul_(bias1, [1.0 / math.sqrt(1.0 - beta2 ** st["step"]) for st in states])
    denom = torch._foreach_sqrt(vs)
    torch._foreach_mul_(denom, bias1)
    torch._foreach_add_(denom, eps_scaled)
    torch._foreach_addcdiv_(params, ms, denom, value=-lr)
