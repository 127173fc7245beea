"""``position=compact``: Givens rotations of a subset of feature pairs, angles proportional to position.

:class:`CompactRotations` turns the interleaved pairs ``(0, 1), (2, 3), ...`` of the first
``2 · rot_pairs`` features of each query and key ``[B, H, T, dim]`` (default
``rot_pairs = dim // 4``: half the features rotate, the rest pass). Pair
``k`` turns by ``f_k · pos · rot_scale · rot_count`` with geometric frequencies
``f_k = θ^(-k/rot_pairs)``, fixed buffers unless ``learned_freq``; ``rot_scale`` and ``rot_count``
are constant buffers. The map is orthogonal and relative (``q·k`` depends only on the offset).
The static methods ``apply_rotary``, ``learned_rotations`` and ``sinusoids`` (Whisper's absolute
sinusoid table) are kept as part of the class's public API.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from famlab.position.base import check_positions
from famlab.position.rotation_math import apply_rotary, init_freqs, learned_rotations, rotate_pairs


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

    # helpers of the class's public API -----------------------------------------------------
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
