"""User-facing errors: one clear line naming the config key or file and what is allowed."""

from __future__ import annotations


class ConfigError(ValueError):
    """Raised for bad user input (config values, files, offline hub data) before training starts."""
