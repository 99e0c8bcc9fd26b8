"""Cascade losses.  ``build_loss(name, spec, **options)``; see METHODS.md §2.

Adding a method: write ``loss/<name>.py`` with a ``@register("<name>")`` class, add its import
below, add a launcher.
"""
from .base import CascadeLoss
from .registry import LOSSES, build_loss, register

from . import bce, lcron  # noqa: E402,F401  (registration side effects)

__all__ = ["CascadeLoss", "LOSSES", "build_loss", "register"]
