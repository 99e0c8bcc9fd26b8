"""The method registry: name -> loss class, with what the launchers and tables need to know.

Adding a method is one file ``loss/<name>.py`` holding a class decorated with
``@register("<name>", display="Shown Name")`` (every module of this package is imported by
``loss/__init__.py``), plus its launchers ``two_stage/<name>.sh`` and ``three_stage/<name>.sh``.
The collector, ``scripts/run_all.sh`` and the tests read the list from here
(``python -m deep_components.loss`` prints it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import CascadeLoss, did_you_mean

if TYPE_CHECKING:
    from ..spec import CascadeSpec

LOSSES: dict[str, type[CascadeLoss]] = {}
#: called with a method's name when it is registered (the spec registry checks it against the
#: registered specs)
_HOOKS: list = []


def on_register(hook) -> None:
    """Call ``hook(name)`` for every method registered from now on."""
    _HOOKS.append(hook)


@dataclass(frozen=True)
class MethodInfo:
    """name: the registry key (``--loss_type``/``--method``); display: the tables' row name;
    paper_rank: the row's position in the paper's tables (None: a method not in the paper,
    listed after them alphabetically); default_tau: the sort temperature the method uses when
    ``--tau`` is 0 (None: the method has no temperature)."""

    name: str
    display: str
    paper_rank: int | None
    default_tau: float | None


METHODS: dict[str, MethodInfo] = {}


def register(name: str, display: str | None = None, paper_rank: int | None = None):
    """Class decorator: register a :class:`CascadeLoss` under ``name``."""
    def deco(cls: type[CascadeLoss]) -> type[CascadeLoss]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        cls.name = name
        LOSSES[name] = cls
        tau = cls.OPTIONS.get("tau")
        METHODS[name] = MethodInfo(name, display or name, paper_rank,
                                   float(tau) if tau is not None else None)
        try:
            for hook in _HOOKS:
                hook(name)
        except ValueError:
            del LOSSES[name], METHODS[name]
            raise
        return cls
    return deco


def method_order() -> list[str]:
    """Every registered method: the paper's in its table order, then the others alphabetically."""
    return sorted(METHODS, key=lambda n: (METHODS[n].paper_rank is None,
                                          METHODS[n].paper_rank or 0, n))


def display_name(name: str) -> str:
    return METHODS[name].display if name in METHODS else name


def build_loss(name: str, spec: CascadeSpec, **options: Any) -> CascadeLoss:
    """Build the loss ``name`` for cascade ``spec``; ``options`` override the method's constants."""
    try:
        cls = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}{did_you_mean(name, LOSSES)}; "
                         f"valid: {', '.join(sorted(LOSSES))}") from None
    return cls(spec, **options)


def check_method_for_spec(name: str, spec: CascadeSpec) -> None:
    """Method ``name`` builds for ``spec`` with its ``method_options`` (a ValueError naming the
    spec otherwise)."""
    try:
        LOSSES[name](spec)
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise ValueError(msg if spec.name in msg else f"cascade spec {spec.name!r}: {msg}") from None


def check_spec_options(spec: CascadeSpec) -> None:
    """Every method of ``spec.method_options`` is registered, and every registered method builds
    for ``spec`` (known option names, one value per stage, the per-setting options given, values
    in range); a ValueError naming the spec otherwise."""
    for name in spec.method_options:
        if name not in LOSSES:
            raise ValueError(f"cascade spec {spec.name!r}: method_options names unknown method "
                             f"{name!r}{did_you_mean(name, LOSSES)}; registered: "
                             f"{', '.join(sorted(LOSSES))}")
    for name in LOSSES:
        check_method_for_spec(name, spec)
