"""LCRON and its baselines: end-to-end training of multi-stage cascade ranking systems."""
__version__ = "0.1.0"
