"""famlab's Optuna sweeper for Hydra (``hydra/sweeper=famlab_optuna``); see optuna_sweeper.py."""
