"""famlab: config-first transformer experiments."""
from omegaconf import OmegaConf

__version__ = "0.1.0"

# Config resolvers, so short runs need no extra overrides:
#   ${famlab.min:100,${trainer.max_steps}}  validate every 100 steps, or at the end of shorter runs
#   ${famlab.warmup:${trainer.max_steps}}   100 warm-up steps, or a tenth of shorter runs
if not OmegaConf.has_resolver("famlab.min"):
    OmegaConf.register_new_resolver("famlab.min", lambda *values: min(int(v) for v in values))
if not OmegaConf.has_resolver("famlab.warmup"):
    OmegaConf.register_new_resolver("famlab.warmup", lambda max_steps, cap=100: min(int(cap), max(1, int(max_steps) // 10)))
