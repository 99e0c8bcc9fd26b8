"""Cascade losses.  ``build_loss(name, spec, **options)``; see METHODS.md §2.

Adding a method: write ``loss/<name>.py`` with a ``@register("<name>")`` class, add its import
below, add a launcher.
"""
from .base import CascadeLoss
from .registry import LOSSES, build_loss, register

from . import arf, arf_v2, bce, fs_lambdaloss, fs_ranknet, icc, lcron, rankflow  # noqa: E402,F401  (registration side effects)

__all__ = ["CascadeLoss", "LOSSES", "build_loss", "register"]
