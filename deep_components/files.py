"""Writing results that are never half-written, and reading them back with errors that name the
file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .atomic import staged
from .errors import UsageError


def ensure_writable(path: Path, what: str, need_bytes: int = 0) -> None:
    """Create ``path`` and prove it writable (and, with ``need_bytes``, roomy enough).

    Raises UsageError naming the folder before any work is done there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{path}: cannot write {what} here ({e.strerror or e}); choose a writable "
                         "location") from None
    if need_bytes:
        import shutil

        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise UsageError(f"{path}: only {free / 2**20:,.0f} MB free, {what} needs about "
                             f"{need_bytes / 2**20:,.0f} MB; free space or choose another location")


def atomic_write(path: Path, write, what: str = "a result") -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, rename over ``path``
    (:func:`deep_components.atomic.staged`).

    A failure (full disk, file-size limit, I/O error) removes the temporary file, leaves the
    previous ``path`` as it was, and raises one UsageError naming the file and the reason."""
    path = Path(path)
    try:
        with staged(path) as tmp, open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:
        reason = (getattr(e, "strerror", None) or str(e).splitlines()[0][:200] or type(e).__name__)
        raise UsageError(f"{path}: cannot write {what} ({reason}); the previous file, if any, is "
                         "unchanged") from None


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, default=str).encode()),
                 "a JSON file")


def read_json(path: Path) -> Any:
    """A JSON file, or a UsageError naming it (missing, unreadable or corrupt)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable or corrupt JSON ({e})") from None
