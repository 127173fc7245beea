"""Former module path of :mod:`famlab.attention.update_gated`, kept so that run directories whose
``config.yaml`` names ``famlab.attention.update_gates.UpdateGatedAttention`` still load."""

from famlab.attention.update_gated import UpdateGatedAttention, UpdatePredictors

__all__ = ["UpdateGatedAttention", "UpdatePredictors"]
