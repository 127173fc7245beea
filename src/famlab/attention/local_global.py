"""``attention=local_global``: :class:`~famlab.attention.integrated.IntegratedAttention` without
the Q-learning refiner.

The local branch's span comes from the span predictor alone (span factor fixed at 1); everything
else, shapes included, is ``attention=integrated``'s. Comparing the two options isolates what the
refiner contributes. ``x`` ``[B, T, dims]`` -> ``[B, T, dims]``.
"""

from __future__ import annotations

from collections.abc import Mapping

from famlab.attention.integrated import IntegratedAttention


class LocalGlobalAttention(IntegratedAttention):
    """:class:`IntegratedAttention` with ``refiner=None``; same arguments, same state dict.

    ``refiner`` is accepted only as ``None`` or a mapping with ``enabled: false`` (the composed
    config of ``attention=integrated`` with the refiner switched off), so a config that asks for a
    refiner here fails instead of being ignored.
    """

    def __init__(self, dims: int, head: int, *args, refiner: Mapping | None = None, **kwargs):
        if refiner is not None and (not isinstance(refiner, Mapping) or refiner.get("enabled", True)):
            raise ValueError(
                "attention.refiner: attention=local_global has no refiner (null); "
                "use attention=integrated for the Q-learning refiner"
            )
        super().__init__(dims, head, *args, refiner=None, **kwargs)
