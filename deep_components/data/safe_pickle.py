"""A restricted unpickler for RecFlow's ``.pkl`` files.

``pickle.load`` on a downloaded file runs whatever the file asks for.  RecFlow's pickles only
need plain containers and numpy arrays, plus the ``utils.defaultdict_tuple`` /
``utils.defaultdict_str`` factories of the released defaultdicts.  Everything else is refused
with a :class:`DataError` naming the file, before any of it runs.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
from typing import Any

from .errors import DataError


def _defaultdict_tuple() -> collections.defaultdict:
    """Stand-in for the released pickles' ``utils.defaultdict_tuple`` factory."""
    return collections.defaultdict(tuple)


def _defaultdict_str() -> collections.defaultdict:
    """Stand-in for the released pickles' ``utils.defaultdict_str`` factory."""
    return collections.defaultdict(str)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:  # numpy >= 2
        from numpy._core import multiarray as ma
        from numpy._core import numeric as nu
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore
        from numpy.core import numeric as nu  # type: ignore
    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = ma._reconstruct
        out[(mod, "scalar")] = ma.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = nu._frombuffer
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    return out


_ALLOWED: dict[tuple[str, str], Any] | None = None


def _allowed() -> dict[tuple[str, str], Any]:
    global _ALLOWED
    if _ALLOWED is None:
        import codecs

        allowed = {
            ("collections", "defaultdict"): collections.defaultdict,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("utils", "defaultdict_tuple"): _defaultdict_tuple,
            ("utils", "defaultdict_str"): _defaultdict_str,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "bytearray"): bytearray,
            ("builtins", "bytes"): bytes,      # empty bytes in protocol 0-2 pickles
            ("builtins", "tuple"): tuple,
            ("builtins", "list"): list,
            ("builtins", "dict"): dict,
            # protocol-2 pickles of numpy arrays encode their bytes through _codecs.encode
            ("_codecs", "encode"): codecs.encode,
        }
        allowed.update(_numpy_globals())
        _ALLOWED = allowed
    return _ALLOWED


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _allowed()[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._path}: refusing to unpickle {module}.{name}: RecFlow pickles may only "
                "hold plain containers, numpy arrays and the utils.defaultdict_tuple/"
                "defaultdict_str factories (a pickle that names anything else could run "
                "arbitrary code)") from None


def open_pickle(path: str, buffering: int = -1):
    """The file opened for reading, or a :class:`DataError` naming it."""
    try:
        return open(path, "rb", buffering=buffering)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle allowing only containers, numpy arrays and RecFlow's defaultdict factories.

    Raises :class:`DataError` naming ``path`` for a missing, corrupt, truncated or unsafe file.
    """
    path = os.fspath(path)
    with open_pickle(path) as f:
        try:
            return _RestrictedUnpickler(f, path).load()
        except DataError:
            raise
        except EOFError:
            raise DataError(f"{path}: truncated pickle (unexpected end of file)") from None
        except Exception as e:  # UnpicklingError, ValueError, TypeError, MemoryError, ...
            raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None
