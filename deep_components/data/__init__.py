"""Reading RecFlow-layout data (real or synthetic) into per-request arrays.

The names below load their module on first use, so a command that needs only part of the
package (``--check``: no torch) imports only that part."""
from __future__ import annotations

import importlib

#: exported name -> the module of the package that defines it
_EXPORTS = {"batch_indices": "batches", "iter_batches": "batches",
            "default_cache_dir": "cache", "load_day": "cache", "DataError": "errors",
            "default_split": "layout", "list_days": "layout", "synthetic_info": "layout",
            "DayData": "day", "read_id_counts": "id_counts", "build_day_arrays": "recflow"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
