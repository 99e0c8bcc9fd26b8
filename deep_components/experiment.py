"""Experiment files: ``--config FILE …`` sets any flag from a TOML file (or a run folder's
config.json, which replays that run).

TOML because Python reads it without a dependency (``tomllib``), its values are typed (no
"yes"/"no"/"on" turning into booleans), and it takes comments.  Keys are RunConfig's field names
(the flags without the dashes; the paper's aliases ``loss_type``, ``epochs``, ``root_path``,
``infer_recall_batch_size`` and ``loss_opt`` too); ``[loss_options]`` is a table of method
options; ``[grid]`` maps fields to lists of values, and every combination is its own run, tagged
with its values; ``[spec]`` defines a cascade (groups, stages with name / tower / quota,
``method_options``), registered and checked like a shipped one, so a setting can live in a file
alone.  Flags given on the command line override the file.  Unknown keys and values of the wrong
type are one error naming the file and the key.

    setting = "two_stage"
    method = "lcron"
    batch_size = 1024
    [loss_options]
    terms = "both"
    [grid]
    tau = [20, 50]
    lr = [0.01, 0.02]
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import UsageError
from .loss.base import did_you_mean

#: the paper's flag names, as keys of a file
ALIASES = {"loss_type": "method", "epochs": "run_id", "root_path": "data_dir",
           "infer_recall_batch_size": "eval_batch_size", "loss_opt": "loss_options"}
#: what a run folder's config.json records beside the flags (read back, not settable)
RECORDED = ("synthetic", "id_counts", "vocab_sizes", "loss_repr", "world_size", "data_digest",
            "run_key", "spec")
TABLES = ("grid", "spec")


def _fields() -> dict[str, Any]:
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(RunConfig)}


def _check_type(where: str, key: str, value: Any, hint: Any) -> Any:
    """``value`` as field ``key`` takes it (int to float where a float is due), or a
    UsageError naming ``where`` and ``key``."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = typing.get_args(hint) if union else (hint,)
    if value is None and type(None) in args:
        return None
    kinds = [a for a in args if a is not type(None)]
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, list) and all(isinstance(x, str) for x in value):
            return list(value)
        if origin is dict and isinstance(value, dict):
            return dict(value)
    want = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise UsageError(f"{where}: {key} = {value!r}: expected {want}")


def _read(path: Path) -> dict:
    import tomllib

    try:
        text = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read the experiment file ({e.strerror or e})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as e:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise UsageError(f"{path}: not a valid {kind} file ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a table of flags at the top level")
    return data


@dataclass
class Experiment:
    """What one file asks for: flag values, a grid over some of them, maybe a cascade."""

    source: str
    values: dict[str, Any]
    grid: dict[str, list] = field(default_factory=dict)
    spec: dict | None = None

    def runs(self) -> list[tuple[dict[str, Any], str]]:
        """(flag values, tag suffix) of every run: one, or one per grid combination."""
        if not self.grid:
            return [(dict(self.values), "")]
        return [(dict(self.values) | combo, suffix) for combo, suffix in combinations(self.grid)]


def combinations(grid: dict[str, list]) -> list[tuple[dict[str, Any], str]]:
    """(values, tag suffix) of every combination of ``grid`` (field -> values), in grid order."""
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        suffix = "_".join(f"{k}{v}" for k, v in zip(keys, combo)).replace("/", "-")
        out.append((dict(zip(keys, combo)), suffix))
    return out


def load(path: str | Path) -> Experiment:
    """Read and check an experiment file (TOML, or a run folder's config.json)."""
    path = Path(path)
    data = _read(path)
    fields = _fields()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name in TABLES or key in RECORDED:
            continue
        if name not in fields:
            raise UsageError(f"{path}: unknown key {key!r}"
                             f"{did_you_mean(key, list(fields) + list(ALIASES) + list(TABLES))}")
        values[name] = _check_type(str(path), key, value, fields[name])
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise UsageError(f"{path}: grid must be a table of field = [values, ...]")
    checked_grid = {}
    for key, options in grid.items():
        name = ALIASES.get(key, key)
        if name not in fields:
            raise UsageError(f"{path}: grid: unknown key {key!r}{did_you_mean(key, list(fields))}")
        if not isinstance(options, list) or not options:
            raise UsageError(f"{path}: grid: {key} must be a non-empty list of values")
        checked_grid[name] = [_check_type(f"{path}: grid", key, v, fields[name]) for v in options]
    spec = data.get("spec")               # a file's [spec], or the spec a config.json stored
    if spec is not None:
        from .specs import spec_of

        name = values.get("setting") or (spec.get("name") if isinstance(spec, dict) else None)
        try:
            registered = spec_of(str(name), spec, f"{path}: spec")
        except ValueError as e:
            raise UsageError(str(e) if str(path) in str(e) else f"{path}: spec: {e}") from None
        values.setdefault("setting", registered.name)
    return Experiment(str(path), values, checked_grid, spec)
