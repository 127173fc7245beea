"""famlab: config-first transformer experiments."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# Config resolvers, so short runs need no extra overrides:
#   ${famlab.min:100,${trainer.max_steps}}  validate every 100 steps, or at the end of shorter runs
#   ${famlab.warmup:${trainer.max_steps}}   100 warm-up steps, or a tenth of shorter runs
#   ${famlab.best_lr:<file>,<arm>}          an arm's tuned lr from famlab compare --emit-best (famlab.tuning)
#   ${famlab.best_target:<file>}            the target emitted with it
if not OmegaConf.has_resolver("famlab.min"):
    OmegaConf.register_new_resolver("famlab.min", lambda *values: min(int(v) for v in values))
if not OmegaConf.has_resolver("famlab.warmup"):
    OmegaConf.register_new_resolver(
        "famlab.warmup", lambda max_steps, cap=100: min(int(cap), max(1, int(max_steps) // 10))
    )


def _best_lr(path, arm):
    from famlab.tuning import best_lr

    return best_lr(path, arm)


def _best_target(path):
    from famlab.tuning import best_target

    return best_target(path)


if not OmegaConf.has_resolver("famlab.best_lr"):
    OmegaConf.register_new_resolver("famlab.best_lr", _best_lr)
if not OmegaConf.has_resolver("famlab.best_target"):
    OmegaConf.register_new_resolver("famlab.best_target", _best_target)
