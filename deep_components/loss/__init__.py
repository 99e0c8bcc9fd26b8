"""Cascade losses, one module per method: ``build_loss(name, spec, **options)``; the math of
each is in docs/methods.md, the loss interface in ``base.CascadeLoss``.

Every module of this package is imported here, so a new ``loss/<name>.py`` with a
``@register("<name>", display=...)`` class is all a method needs (plus its two launchers).
"""
import importlib
import pkgutil

from .base import CascadeLoss
from .registry import LOSSES, METHODS, MethodInfo, build_loss, display_name, method_order, register

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name != "__main__":
        importlib.import_module(f"{__name__}.{_m.name}")     # registration side effects

__all__ = ["CascadeLoss", "LOSSES", "METHODS", "MethodInfo", "build_loss", "display_name",
           "method_order", "register"]
