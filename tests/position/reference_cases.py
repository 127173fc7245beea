"""Fixed-seed values of the rotary schemes, for ``test_reference.py``.

``python tests/position/reference_cases.py`` rewrites ``reference.json``: for every case, the
``state_dict`` (keys, shapes, values), the trainable parameter names, ``rotate_qk`` of a fixed
float64 input ``[1, 2, 5, hd]`` at positions ``3..7``, the angle table ``forward(positions)``,
the gradients of ``(rotate_qk(x) * g).sum()`` and ``metrics()``. Each case is built twice by the
test, from its option file (``conf/position/<option>.yaml`` plus overrides) and through the
``RotaryEmbedding(..., use_quaternion=..., use_projection=...)`` constructor, and both must match.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference.json"
T = 5

# name: (option file, head dim, option-file overrides, RotaryEmbedding keyword arguments)
CASES = {
    "rotary": ("rotary", 12, {}, {}),
    "rotary_partial": ("rotary", 12, {"rot_dim": 8}, {"rot_dim": 8}),
    "rotary_num_freqs": ("rotary", 12, {"num_freqs": 3}, {"num_freqs": 3}),
    "rotary_legacy": (
        "rotary",
        12,
        {"freqs_for": "legacy_linear", "theta": 100.0, "theta_rescale_factor": 2.0},
        {"freqs_for": "legacy_linear", "theta": 100.0, "theta_rescale_factor": 2.0},
    ),
    "rotary_fixed": ("rotary", 10, {"learned_freq": False}, {"learned_freq": False}),
    "quaternion": ("quaternion", 12, {}, {"use_quaternion": True}),
    "quaternion_single": ("quaternion", 13, {}, {"use_quaternion": True}),
    "quaternion_pair": ("quaternion", 14, {}, {"use_quaternion": True}),
    "quaternion_rot_dim": ("quaternion", 12, {"rot_dim": 11}, {"use_quaternion": True, "rot_dim": 11}),
    "quaternion_scaled": (
        "quaternion",
        9,
        {"rot_scale": 0.5, "rot_count": 3, "theta_rescale_factor": 1.5},
        {"use_quaternion": True, "rot_scale": 0.5, "rot_count": 3, "theta_rescale_factor": 1.5},
    ),
    "projection": ("projection", 12, {}, {"use_quaternion": True, "use_projection": True}),
    "projection_wide": (
        "projection",
        12,
        {"proj_dim": 5, "proj_scale": 0.3},
        {"use_quaternion": True, "use_projection": True, "proj_dim": 5, "proj_scale": 0.3},
    ),
    "projection_pairs": (
        "projection",
        12,
        {"use_quaternion": False, "proj_dim": 4},
        {"use_projection": True, "proj_dim": 4},
    ),
}


def inputs(hd: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed input ``x`` and output gradient ``g``, both ``[1, 2, T, hd]`` float64."""
    gen = torch.Generator().manual_seed(hd)
    return (
        torch.randn(1, 2, T, hd, generator=gen, dtype=torch.float64),
        torch.randn(1, 2, T, hd, generator=gen, dtype=torch.float64),
    )


def build(factory, hd: int) -> torch.nn.Module:
    """``factory(hd)`` under ``torch.manual_seed(0)`` (the projection's init draws from it)."""
    torch.manual_seed(0)
    return factory(hd)


def record(scheme: torch.nn.Module, hd: int) -> dict:
    """The values ``reference.json`` stores for one built scheme (see the module docstring)."""
    state = {
        k: {"shape": list(v.shape), "values": v.double().flatten().tolist()} for k, v in scheme.state_dict().items()
    }
    trainable = [n for n, p in scheme.named_parameters() if p.requires_grad]
    scheme = scheme.double()
    x, g = inputs(hd)
    x.requires_grad_()
    positions = torch.arange(T) + 3
    out = scheme.rotate_qk(x, positions)
    params = [p for n, p in scheme.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * g).sum(), [x, *params])
    return {
        "state_dict": state,
        "trainable": trainable,
        "rotate_qk": out.detach().flatten().tolist(),
        "forward": scheme(positions).detach().flatten().tolist(),
        "grads": {n: gr.flatten().tolist() for n, gr in zip(["input", *trainable], grads)},
        "metrics": {k: float(v) for k, v in scheme.metrics().items()},
    }


def main() -> None:
    import functools

    from famlab.position.rotary import RotaryEmbedding

    out = {}
    for name, (_, hd, _, kwargs) in CASES.items():
        out[name] = record(build(functools.partial(RotaryEmbedding, **kwargs), hd), hd)
    lines = [f"{json.dumps(name)}: {json.dumps(value, separators=(',', ':'))}" for name, value in out.items()]
    REFERENCE.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {REFERENCE} ({len(out)} cases)")


if __name__ == "__main__":
    main()
