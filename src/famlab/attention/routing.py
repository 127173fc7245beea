"""Per-token routing decisions with straight-through gradients (the myelinated mixer's skip and jump).

* :func:`straight_through`: a hard 0/1 decision in the forward, the gradient of a soft score in
  the backward (Bengio et al. 2013, arXiv:1308.3432).
* :func:`prefix_mean`: causal running mean over time ``[B, T, C]`` that continues a cached sum,
  so decisions taken on it are causal and identical in cached decoding.
* ``RUN_ABOVE`` / ``SKIP_BELOW``: a token runs a sub-layer where the running mean of its
  importance is above ``RUN_ABOVE``, and skips a sub-layer other than the first where it is below
  ``SKIP_BELOW``.
* :func:`apply_jump`: whether a token jumps ahead and by how many sub-layers (1-3), sampled by
  straight-through Gumbel-softmax (Jang et al. 2017; Maddison et al. 2017) in training and by
  argmax in eval; :func:`decide_jump` is the same function under its original argument names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SKIP_BELOW = 0.2  # a sub-layer (not the first) is skipped where the running importance is below this
RUN_ABOVE = 0.3  # a sub-layer runs where the running importance is above this


def straight_through(soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """Forward value exactly ``hard`` (bool or 0/1), gradient of ``soft``."""
    return hard.to(soft.dtype) + (soft - soft.detach())


def prefix_mean(x: torch.Tensor, prev_sum: torch.Tensor | None = None, prev_count: int = 0):
    """Causal running mean over time of ``x`` ``[B, T, C]`` continuing a cached sum ``[B, 1, C]``.

    Returns ``(mean [B, T, C], new_sum [B, 1, C])``.
    """
    csum = x.cumsum(1)
    if prev_sum is not None:
        csum = csum + prev_sum
    count = torch.arange(prev_count + 1, prev_count + x.shape[1] + 1, device=x.device, dtype=x.dtype)
    return csum / count[:, None], csum[:, -1:]


def apply_jump(
    log_policy, jump_weights, sublayer, num_sublayers, x, block_input, memory, *, eligible, noise=None, tau=1.0
):
    """Per-token jump decision after sub-layer ``sublayer`` (batched and differentiable).

    ``log_policy`` ``[B, T, 3]`` log policy; ``x``, ``block_input`` (the mixer's input ``x0``) and
    ``memory`` (the working memory) ``[B, T, D]``; ``eligible`` ``[B, T, 1]`` (1 where the token is
    at this sub-layer and not skipping it); ``noise`` ``[B, T, 4]`` uniforms (training) or None
    (eval: argmax). Jump probability is ``pi[..., 1]`` (no jump after the last of the
    ``num_sublayers``); the length ``1 + argmax`` of a Gumbel-perturbed ``pi``;
    ``w = jump_weights[length - 1]``, and a jumping token becomes
    ``(x + w * block_input + (1 - w) * memory) / 2``.
    Returns ``(x', jump [B, T, 1], length one-hot [B, T, 3])``, all straight-through.
    """
    if sublayer >= num_sublayers - 1:
        zeros = torch.zeros_like(eligible)
        return x, zeros, torch.zeros_like(log_policy)
    # slices, not an index tensor
    jump_logit = log_policy[..., 1:2] - torch.logaddexp(log_policy[..., 0:1], log_policy[..., 2:3])
    len_logit = log_policy
    if noise is not None:
        u = noise.clamp(1e-6, 1 - 1e-6)
        jump_logit = jump_logit + torch.log(u[..., :1]) - torch.log1p(-u[..., :1])  # logistic noise
        len_logit = len_logit - torch.log(-torch.log(u[..., 1:]))  # Gumbel noise
    jump = straight_through(torch.sigmoid(jump_logit / tau), jump_logit > 0) * eligible
    soft_len = F.softmax(len_logit / tau, dim=-1)
    hard_len = len_logit.argmax(-1, keepdim=True) == torch.arange(3, device=x.device)  # one-hot, no host sync
    length = straight_through(soft_len, hard_len)
    w = (length * jump_weights).sum(-1, keepdim=True)
    x_jump = 0.5 * (x + w * block_input + (1 - w) * memory)
    return x + jump * (x_jump - x), jump, length


def decide_jump(log_pi, jump_weights, i, layerA, x, x0, wm, *, decider, noise=None, tau=1.0):
    """:func:`apply_jump` under its original name and argument names (docs/provenance.md §4):
    ``layerA`` = ``num_sublayers``, ``x0`` = ``block_input``, ``wm`` = ``memory``, ``decider`` =
    ``eligible``."""
    return apply_jump(log_pi, jump_weights, i, layerA, x, x0, wm, eligible=decider, noise=noise, tau=tau)
