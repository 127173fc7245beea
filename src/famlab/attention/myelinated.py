"""``attention=myelinated``: a stack of gated attention sub-layers with per-token, trainable
skip and jump decisions (``MyelinatedLayer``).

``x`` ``[B, T, D]`` (the block's ``ln_1`` output) -> the block's delta ``[B, T, D]``. Inside one
mixer, ``layerA`` attention sub-layers (:class:`MyelinSublayer`: LayerNorm, q/k/v/out
projections with the position scheme, a causal band of ``max_dist`` keys, a sigmoid output gate,
an adapter on even sub-layers) run in turn. For each token (batch element and position) and
sub-layer ``i``:

* a node predictor scores the token's importance ``p = sigmoid(pred_i(x))``; tokens with
  ``p <= sparsity_threshold`` are masked out as keys (a query always sees itself);
* the causal running mean of the importance decides whether the token runs the sub-layer
  (mean above 0.3) and, after the first sub-layer, whether it skips it (below 0.2); both are
  straight-through hard thresholds (Bengio et al. 2013): the forward value is 0/1, the gradient
  reaches the node predictors (:mod:`famlab.attention.routing`). Decisions are masks,
  ``x <- x + active * delta``;
* a working memory ``[1, 1, D]`` follows the running mean of ``x`` through a sigmoid gate;
* a policy network on the running mean of the block input decides, per token, whether to jump
  ahead and by how many sub-layers (1-3), by straight-through Gumbel-softmax (Jang et al. 2017;
  Maddison et al. 2017); a jump mixes ``x <- (x + w * x0 + (1 - w) * memory) / 2`` with
  ``w = jump_weights[length - 1]`` (a convex mix, so norms cannot grow).

A gated MLP closes the block. The Gumbel noise comes from a ``torch.Generator`` re-seeded from
``(seed, forward counter)`` (identical on every rank; the counter is checkpointed through
``get_extra_state``); eval is deterministic (argmax). Related work: SkipNet (Wang et al. 2018),
Adaptive Computation Time (Graves 2016), Mixture-of-Depths (Raposo et al. 2024).

Compute skipping (``skip_compute``): ``"eval"`` (default) really skips a sub-layer in eval
(generation included) when no token of the whole batch runs it, which needs one host read
``bool(active.any())`` per sub-layer and forward (tensor shapes and kernel launches are decided on
the host); training forwards mask and never read back. ``"batch"`` also skips in training, only
when no ``torch.distributed`` process group is initialised (the reads then happen every training
forward); ``"never"`` never reads back. Whenever compute is not skipped it is masked, so under DDP
every parameter takes part in every step (skipped deltas are multiplied by 0). Real skipping in
training drops the straight-through gradient the masked path would give the node predictors of
that sub-layer for that step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from famlab.attention.cache import KVCache
from famlab.attention.core import AttentionBase
from famlab.attention.routing import (
    RUN_ABOVE,
    SKIP_BELOW,
    apply_jump,
    decide_jump,  # noqa: F401  (importable from here under its original name)
    prefix_mean,
    straight_through,
)

SKIP_COMPUTE = ("batch", "eval", "never")


class MyelinSublayer(AttentionBase):
    """One gated attention sub-layer: ``ln`` -> q/k/v (+ position) -> masked SDPA -> out.

    ``forward(x [B,T,D], positions [T], key_keep [B,Tk] bool, past int, kv KVCache|None)``
    returns ``sigmoid(gate(ln x)) * adapter(attn)`` ``[B, T, D]`` (adapter on even sub-layers).
    """

    def __init__(self, dims: int, head: int, position: nn.Module, adapter: bool, max_dist: int):
        super().__init__(dims, head, position)
        self.ln = nn.LayerNorm(dims)
        self.gate = nn.Linear(dims, 1)
        self.adapter = nn.Linear(dims, dims) if adapter else None
        self.max_dist = max_dist

    def project(self, x, positions, kv: KVCache | None):
        n = self.ln(x)
        q, k, v = self.project_qkv(n, positions)
        if kv is not None:
            k, v = kv.append(k, v)
        return n, q, k, v

    def forward(self, x, positions, key_keep, past: int = 0, kv: KVCache | None = None):
        n, q, k, v = self.project(x, positions, kv)
        q_pos = torch.arange(past, past + x.shape[1], device=x.device)
        k_pos = torch.arange(k.shape[-2], device=x.device)
        rel = q_pos[:, None] - k_pos[None, :]
        band = (rel >= 0) & (rel < self.max_dist)
        mask = band & (key_keep[:, None, None, :] | (rel == 0))  # [B, 1, T, Tk]
        a = self.out(self.attend(q, k, v, mask=mask))
        if self.adapter is not None:
            a = self.adapter(a)
        return torch.sigmoid(self.gate(n)) * a


class MyelinatedLayer(nn.Module):
    """Mixer ``[B, T, D] -> [B, T, D]`` (the delta); see the module docstring for the design.

    ``layerA`` is the number of attention sub-layers (the original's name and positional order,
    ``MyelinatedLayer(dims, head, layerA, sparsity_threshold, max_dist)``; stored as
    :attr:`num_sublayers`, with ``layerA`` kept as a read-only alias).
    """

    def __init__(
        self,
        dims: int,
        head: int,
        layerA: int = 3,
        sparsity_threshold: float = 0.1,
        max_dist: int = 512,
        *,
        position: nn.Module | None = None,
        tau: float = 1.0,
        skip_compute: str = "eval",
        seed: int = 0,
    ):
        super().__init__()
        if isinstance(layerA, nn.Module):
            raise TypeError("MyelinatedLayer: the third positional argument is layerA; pass position=... by keyword")
        if int(layerA) < 1:  # validated after the cast: 1.5 sub-layers is 1, 0.5 is refused
            raise ValueError(f"attention.layerA must be an integer >= 1, got {layerA!r}")
        if not 0.0 < sparsity_threshold < 1.0:
            raise ValueError(f"attention.sparsity_threshold must be in (0, 1), got {sparsity_threshold}")
        if tau <= 0 or int(max_dist) < 1:
            raise ValueError(
                f"attention.tau must be > 0 and attention.max_dist an integer >= 1, got {tau}, {max_dist!r}"
            )
        max_dist = int(max_dist)
        if skip_compute not in SKIP_COMPUTE:
            raise ValueError(f"attention.skip_compute must be one of {SKIP_COMPUTE}, got {skip_compute!r}")
        self.dims, self.head, self.num_sublayers = dims, head, int(layerA)
        self.sparsity_threshold, self.tau, self.skip_compute, self.seed = sparsity_threshold, tau, skip_compute, seed
        self.sublayers = nn.ModuleList(
            MyelinSublayer(dims, head, position, adapter=(i % 2 == 0), max_dist=max_dist)
            for i in range(self.num_sublayers)
        )
        self.position = self.sublayers[0].position
        self.node_predictors = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dims), nn.Linear(dims, 1)) for _ in range(self.num_sublayers)
        )
        self.policy_net = nn.Sequential(nn.Linear(dims, 128), nn.ReLU(), nn.Linear(128, 3))
        self.jump_weights = nn.Parameter(torch.tensor([0.1, 0.05, 0.01]))
        self.mlp_gate = nn.Linear(dims, 1)
        self.mlp_ln = nn.LayerNorm(dims)
        self.mlp = nn.Sequential(nn.Linear(dims, 4 * dims), nn.GELU(), nn.Linear(4 * dims, dims))
        self.working_memory = nn.Parameter(torch.zeros(1, 1, dims))
        self.memory_gate = nn.Linear(dims, 1)
        self._draws = 0  # forward passes that drew noise; checkpointed via get_extra_state
        self._generator: torch.Generator | None = None
        self._acc: torch.Tensor | None = None  # [skip rate per sub-layer, jump rate, memory gate, count]
        self.last_active: torch.Tensor | None = None  # [num_sublayers, B, T] 0/1, detached
        self.last_jump: torch.Tensor | None = None  # [num_sublayers, B, T] 0/1, detached

    @property
    def layerA(self) -> int:
        """The original name of :attr:`num_sublayers`."""
        return self.num_sublayers

    # --- state ------------------------------------------------------------------------
    @property
    def record_stats(self) -> bool:
        return self.sublayers[0].record_stats

    @record_stats.setter
    def record_stats(self, on: bool) -> None:
        for sub in self.sublayers:
            sub.record_stats = on

    def get_extra_state(self):
        return {"draws": self._draws, "seed": self.seed}

    def set_extra_state(self, state) -> None:
        self._draws, self.seed = int(state["draws"]), int(state["seed"])

    def _noise(self, shape, device) -> torch.Tensor:
        """Uniforms from a generator seeded by ``(seed, draws)``: same on every rank, reproducible.

        Under DDP the noise is drawn for the *global* batch and each rank keeps rows
        ``rank::world`` (the data's slicing), so a sample gets the same noise whether it is
        trained by one process or by several.
        """
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device)
        self._generator.manual_seed((self.seed * 1_000_003 + self._draws) % (2**63 - 1))
        self._draws += 1
        full = torch.rand((shape[0] * world, *shape[1:]), generator=self._generator, device=device)
        return full[rank::world]

    def _may_skip(self) -> bool:
        """Whether a sub-layer no token runs may be skipped (one host read) in this forward.

        Never while training under any initialised process group, whatever its size: DDP (even
        with one process) expects every parameter to receive a gradient at every step."""
        if self.skip_compute == "never":
            return False
        if not self.training:
            return True
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return self.skip_compute == "batch" and not distributed

    # --- forward ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        past = 0 if cache is None else len(cache)
        n = self.num_sublayers
        state = None if cache is None else cache.extra.setdefault("myelin", self._new_cache_state())
        x0, x_in = x, x
        running_x0, total = prefix_mean(x0, state and state["x0_sum"], past)
        if state is not None:
            state["x0_sum"] = total
        log_policy = F.log_softmax(self.policy_net(running_x0), dim=-1)
        noise = self._noise((B, T, n, 4), x.device) if self.training and n > 1 else None
        memory = self.working_memory.expand(B, T, -1)
        # arrivals[i] [B, T, 1]: 1 where the token reaches sub-layer i (walking or jumping), else 0
        arrivals = [torch.ones_like(x[..., :1])] + [torch.zeros_like(x[..., :1]) for _ in range(n - 1)]
        may_skip = self._may_skip()
        stats, actives, jumps = [], [], []
        for i, sub in enumerate(self.sublayers):
            here = arrivals[i]
            p = torch.sigmoid(self.node_predictors[i](x))
            keep = p.squeeze(-1) > self.sparsity_threshold  # [B, T] key mask, True = may be attended
            importance, total = prefix_mean(straight_through(p, keep[..., None]), state and state["imp_sum"][i], past)
            skip = straight_through(1 - importance, importance < SKIP_BELOW) if i > 0 else torch.zeros_like(importance)
            active = here * straight_through(importance, importance > RUN_ABOVE)
            kv = None
            if state is not None:
                state["imp_sum"][i] = total
                state["keep"][i] = keep if state["keep"][i] is None else torch.cat([state["keep"][i], keep], 1)
                keep, kv = state["keep"][i], (cache if i == 0 else state["kv"][i])
            if may_skip and not bool((active.detach() > 0).any()):  # one host read; see docstring
                if kv is not None:  # later tokens still need this sub-layer's keys
                    sub.project(x, positions, kv)
            else:
                x = x + active * sub(x, positions, keep, past, kv)
            running_x, total = prefix_mean(x, state and state["x_sum"][i], past)
            if state is not None:
                state["x_sum"][i] = total
            g = torch.sigmoid(self.memory_gate(running_x))
            memory = memory + active * (g * memory + (1 - g) * running_x - memory)
            x, jump, length = apply_jump(
                log_policy,
                self.jump_weights,
                i,
                n,
                x,
                x0,
                memory,
                eligible=here * (1 - skip),
                noise=None if noise is None else noise[:, :, i],
                tau=self.tau,
            )
            if i < n - 1:
                arrivals[i + 1] = arrivals[i + 1] + here - jump
                for step in range(3):
                    target = min(i + 1 + step, n - 1)
                    arrivals[target] = arrivals[target] + jump * length[..., step : step + 1]
            stats.append(torch.stack([1 - active.mean(), jump.mean(), g.mean()]).detach())
            actives.append(active.detach().squeeze(-1))
            jumps.append(jump.detach().squeeze(-1))
        x = x + torch.sigmoid(self.mlp_gate(x)) * self.mlp(self.mlp_ln(x))
        self._accumulate(torch.stack(stats))
        self.last_active, self.last_jump = torch.stack(actives), torch.stack(jumps)
        return x - x_in

    def _new_cache_state(self) -> dict:
        n = self.num_sublayers
        return {
            "x0_sum": None,
            "imp_sum": [None] * n,
            "x_sum": [None] * n,
            "keep": [None] * n,
            "kv": [None] + [KVCache() for _ in range(n - 1)],
        }

    # --- diagnostics ------------------------------------------------------------------
    def _accumulate(self, stats: torch.Tensor) -> None:
        """``stats`` ``[num_sublayers, 3]``: skip rate, jump rate, memory gate per sub-layer."""
        jumps = stats[:-1, 1].mean() if self.num_sublayers > 1 else stats.new_zeros(())
        row = torch.cat([stats[:, 0], jumps[None], stats[:, 2].mean()[None], stats.new_ones(1)])
        self._acc = row if self._acc is None or self._acc.device != row.device else self._acc + row

    def metrics(self) -> dict[str, torch.Tensor]:
        """Means since the last call (detached): ``skip/rate_<i>`` = fraction of tokens that did not
        run sub-layer ``i`` (skipped, jumped over, or importance not above 0.3), ``skip/jump_rate``
        = jumps per decision point, ``skip/memory_gate`` = mean memory gate; plus sub-layer
        attention stats ``attn/<stat>_s<i>`` while ``record_stats`` is on."""
        out: dict[str, torch.Tensor] = {}
        for i, sub in enumerate(self.sublayers):
            out.update({f"{k}_s{i}": v for k, v in sub.metrics().items()})
        if self._acc is not None:
            mean = self._acc[:-1] / self._acc[-1]
            n = self.num_sublayers
            out.update({f"skip/rate_{i}": mean[i] for i in range(n)})
            out["skip/jump_rate"], out["skip/memory_gate"] = mean[n], mean[n + 1]
            self._acc = None
        return out
