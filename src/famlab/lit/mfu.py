"""Model FLOPs utilisation: achieved training FLOP/s over the GPU's peak bf16 FLOP/s.

The model's FLOPs per token are the analytic estimate of the PaLM paper that nanoGPT's
``estimate_mfu`` uses: a forward and backward pass costs 6 FLOPs per parameter per token (2 for
the forward multiply-add, 4 for the backward), plus the attention scores and the weighted sum of
values, 12 x layers x dims x T per token for a sequence of T tokens (heads x head dim = dims).
Embedding lookups cost nothing but the tied output head is a matmul, so every parameter counts
once. The attention variants' extra work (refiners, gates) enters only through their parameters;
for them the figure is a lower bound.

``PEAK_BF16_FLOPS`` lists dense (not 2:4 sparse) bf16 tensor-core peaks with fp32 accumulation,
from the vendors' data sheets; V100 and T4 have no bf16, their fp16 peak is listed.
"""

from __future__ import annotations

import torch
from torch import nn

# first match wins: more specific names come before names they contain ("H100 PCIe" before "H100")
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),  # AWS variant of the A10 at lower clocks; NVIDIA publishes no sheet: approximate
    ("A10", 125e12),
    ("A6000", 155e12),  # RTX A6000
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16 (no bf16)
    ("T4", 65e12),  # fp16 (no bf16)
)


def peak_flops(device_name: str) -> float | None:
    """Peak dense bf16 FLOP/s of a GPU from its name (``torch.cuda.get_device_name()``), or None."""
    for key, peak in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def device_peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of ``device`` when it is a known CUDA GPU; None on the CPU or an unknown GPU."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops(torch.cuda.get_device_name(device))


def flops_per_token(n_params: int, layers: int, dims: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward) per token: ``6 N + 12 L d T``."""
    return 6.0 * n_params + 12.0 * layers * dims * seq_len


def model_flops_per_token(model: nn.Module, seq_len: int | None = None) -> float:
    """:func:`flops_per_token` of a ``TransformerLM`` (its unique parameters, layers, dims and, unless
    given, its context as the sequence length)."""
    n_params = sum(p.numel() for p in model.parameters())
    return flops_per_token(n_params, len(model.blocks), int(model.dims), int(seq_len or model.context))


def mfu(flops_per_tok: float, tokens_per_s: float, peak: float) -> float:
    """Fraction of ``peak`` FLOP/s achieved at ``tokens_per_s``."""
    return flops_per_tok * tokens_per_s / peak
