"""Name -> loss class.  Adding a method: one file with ``@register("name")``, one import line in
``loss/__init__.py``."""
from __future__ import annotations

from typing import Any

from ..cascade import CascadeSpec
from .base import CascadeLoss, did_you_mean

LOSSES: dict[str, type[CascadeLoss]] = {}


def register(name: str):
    def deco(cls: type[CascadeLoss]) -> type[CascadeLoss]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        cls.name = name
        LOSSES[name] = cls
        return cls
    return deco


def build_loss(name: str, spec: CascadeSpec, **options: Any) -> CascadeLoss:
    """Build the loss ``name`` for cascade ``spec``; ``options`` override METHODS §10 constants."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}{did_you_mean(name, LOSSES)}; "
                         f"valid: {', '.join(sorted(LOSSES))}") from None
    return cls(spec, **options)
