"""Optimizers: the FAM family, parameter groups, schedulers and the config factories."""

from famlab.optim.fam import FAMOptimizer
from famlab.optim.groups import get_parameter_groups
from famlab.optim.schedulers import FAMScheduler

__all__ = ["FAMOptimizer", "FAMScheduler", "get_parameter_groups"]
