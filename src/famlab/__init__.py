"""famlab: config-first transformer experiments."""
__version__ = "0.1.0"
