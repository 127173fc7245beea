"""``position=compact``: a lightweight set of Givens rotations on a subset of feature pairs.

``CompactRotations(dim, rot_pairs=None, rot_scale=1.0, rot_count=1, learned_freq=False)`` keeps
the seed's signature (``LSrotations``, spec section 2.3). Pairs are the interleaved
``(0, 1), (2, 3), ...`` of the first ``2·rot_pairs`` features (default ``rot_pairs = dim // 4``:
half the head rotates, the rest passes). Pair ``k`` turns by ``freq_k · pos · rot_scale · rot_count``.

Differences from the seed: a real ``nn.Module`` with the ``rotate_qk`` interface; angles are
proportional to position (the seed turned every token by the same constant ``2π/#pairs``, which
leaves ``q·k`` unchanged); frequencies follow a geometric layout ``θ^(-k/rot_pairs)`` (added
``theta`` argument, default 10000) instead of one shared ``2π/#pairs`` that would alias every
``#pairs`` tokens; with ``learned_freq`` the frequencies are a registered, used ``Parameter``
(the seed created one and dropped it); ``rotate_half`` is the correct interleaved one (the seed's
concatenated halves, which is not a rotation); no dense ``d×d`` matmuls.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from famlab.position.base import check_positions
from famlab.position.rotary import apply_rotary, init_freqs, learned_rotations, rotate_pairs


class CompactRotations(nn.Module):
    """Position scheme ``rotate_qk(t [B, H, T, dim], positions [T]) -> [B, H, T, dim]``."""

    def __init__(
        self,
        dim: int,
        rot_pairs: int | None = None,
        rot_scale: float = 1.0,
        rot_count: float = 1,
        learned_freq: bool = False,
        theta: float = 10000.0,
    ):
        super().__init__()
        rot_pairs = max(dim // 4, 1) if rot_pairs is None else int(rot_pairs)
        if not 1 <= rot_pairs <= dim // 2:
            raise ValueError(f"position.rot_pairs must be in [1, head dim // 2 = {dim // 2}], got {rot_pairs}")
        if rot_count <= 0 or theta <= 0:
            raise ValueError(f"position.rot_count and position.theta must be > 0, got {rot_count}, {theta}")
        self.head_dim, self.rot_pairs, self.learned_freq = int(dim), rot_pairs, bool(learned_freq)
        freqs = init_freqs(rot_pairs, theta, "lang")
        if learned_freq:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs)
        self.register_buffer("rot_scale", torch.tensor(float(rot_scale)))
        self.register_buffer("rot_count", torch.tensor(float(rot_count)))

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Per-pair angles ``[T] -> [T, rot_pairs]`` (fp32)."""
        return positions.to(self.freqs.dtype)[:, None] * self.freqs * (self.rot_scale * self.rot_count)

    def rotate_qk(self, t: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate queries or keys ``t`` ``[B, H, T, dim]`` at absolute ``positions`` ``[T]``."""
        positions = check_positions(t, positions, self.head_dim)
        return rotate_pairs(t, self.angles(positions))

    # seed API ------------------------------------------------------------------------------
    @staticmethod
    def apply_rotary(freqs, t, start_index: int = 0, scale=1.0, seq_dim: int = -2):
        return apply_rotary(freqs, t, start_index=start_index, scale=scale, seq_dim=seq_dim)

    @staticmethod
    def learned_rotations(rotations, t, start_index: int = 0, freq_ranges=None):
        return learned_rotations(rotations, t, start_index=start_index, freq_ranges=freq_ranges)

    @staticmethod
    def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
        """Whisper's absolute sinusoid table ``[length, channels]`` (``sin | cos`` halves)."""
        if channels % 2 or channels < 4:
            raise ValueError(f"sinusoids: channels must be even and >= 4, got {channels}")
        increment = math.log(max_timescale) / (channels // 2 - 1)
        inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
        scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
        return torch.cat([scaled.sin(), scaled.cos()], dim=1)

    @torch.no_grad()
    def metrics(self) -> dict[str, torch.Tensor]:
        """Frequency mean/std/min/max (move only when ``learned_freq``)."""
        f = self.freqs.detach().float()
        return {
            "position/freq_mean": f.mean(),
            "position/freq_std": f.std(correction=0),
            "position/freq_min": f.min(),
            "position/freq_max": f.max(),
        }

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rot_pairs={self.rot_pairs}, learned_freq={self.learned_freq}"
