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


def momentum_update(ms, grads, alpha: float, adaptive: dict[int, torch.Tensor], params=None, wd: float = 0.0):
    """``m <- lerp(m, g + wd*p, 1 - a)`` with ``a = adaptive[i]`` (0-dim tensor) where given, else ``alpha``.

    The coupled L2 term is added to the momentum (``m <- lerp(m, g, 1-a) + (1-a)*wd*p``) rather than to a
    decayed copy of the gradient: the same update without allocating a gradient-sized tensor per step."""
    fixed = [i for i in range(len(ms)) if i not in adaptive]
    ada = list(adaptive)
    if fixed:
        torch._foreach_lerp_([ms[i] for i in fixed], [grads[i] for i in fixed], 1.0 - alpha)
        if wd != 0:
            torch._foreach_add_([ms[i] for i in fixed], [params[i] for i in fixed], alpha=(1.0 - alpha) * wd)
    if ada:
        weights = torch.stack([adaptive[i] for i in ada]).neg_().add_(1.0).unbind(0)  # 1 - alpha_eff, 0-dim each
        weights = [w if w.dtype == ms[i].dtype else w.to(ms[i].dtype) for w, i in zip(weights, ada)]
        torch._foreach_lerp_([ms[i] for i in ada], [grads[i] for i in ada], weights)
        if wd != 0:
            torch._foreach_addcmul_([ms[i] for i in ada], [params[i] for i in ada], weights, value=wd)


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
    if base == "sgd":
        momentum_update(ms, grads, alpha, adaptive, params, wd)
        torch._foreach_add_(params, ms, alpha=-lr)
        return
    momentum_update(ms, grads, alpha, adaptive)
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
