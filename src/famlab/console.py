"""Keep third-party noise off the console unless ``verbose=true``; famlab's own messages stay.

Silenced: Lightning's product tips (``💡 Tip: ... litlogger / litmodels``), wandb's warning about the
deprecated ``anonymous`` setting (Lightning's ``WandbLogger`` always passes it), and the pytree
``LeafSpec`` deprecation warning that Lightning triggers on every run. Each filter matches that one
message only, so every other warning, from famlab or from a library, still prints.
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
WANDB_NOISE = ("anonymous setting has no effect", "Deprecated setting 'anonymous'")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


_TIPS = _DropTips()


def quiet_third_party(verbose: bool = False) -> None:
    """Install the filters (idempotent); ``verbose=True`` removes them again."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        logger.removeFilter(_TIPS)
        if not verbose:
            logger.addFilter(_TIPS)
    if verbose:
        warnings.filterwarnings("default", message=r".*LeafSpec.*")
    else:
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    _filter_wandb(verbose)


def _filter_wandb(verbose: bool) -> None:
    try:
        import wandb
    except ImportError:  # wandb is a dependency, but a stripped environment may lack it
        return
    current = wandb.termwarn
    original = getattr(current, "__wrapped__", current)
    if verbose:
        wandb.termwarn = original
        return

    def termwarn(string, *args, **kwargs):
        if any(noise in str(string) for noise in WANDB_NOISE):
            return None
        return original(string, *args, **kwargs)

    termwarn.__wrapped__ = original
    wandb.termwarn = termwarn
