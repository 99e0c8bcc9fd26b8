"""Device choice, seeding, environment capture and small I/O helpers shared by train/test."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import staged


class UsageError(Exception):
    """A problem the user can fix by changing a flag; entry points print it and exit 2."""


class TrainingError(Exception):
    """Training had to stop (e.g. a non-finite loss); entry points print it and exit 3."""


def report_error(e: BaseException) -> int:
    """One ``error: …`` line on stderr for a failure the user can act on (an OSError names its
    file); returns the exit code: 3 for a training failure, 2 otherwise."""
    if isinstance(e, OSError) and not isinstance(e, (UsageError, TrainingError)):
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    else:
        print(f"error: {e}", file=sys.stderr)
    return 3 if isinstance(e, TrainingError) else 2


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


def resolve_device(name: str) -> torch.device:
    """'auto' (cuda if available), 'auto:N', 'cpu', 'cuda', 'cuda:N'."""
    index = None
    if name.startswith("auto"):
        if ":" in name:
            index = int(name.split(":", 1)[1])
        name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda" and index is not None:
            name = f"cuda:{index}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine "
                         "(use --device cpu or auto)")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name}: {e}") from None
    if device.type == "cuda" and device.index is not None:
        n = torch.cuda.device_count()
        if device.index >= n:
            raise UsageError(f"--device {name}: this machine has {n} CUDA device(s) "
                             f"(cuda:0{f' ... cuda:{n - 1}' if n > 1 else ''})")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of handing them back to the OS.

    A training step allocates and frees tensors of tens of MB (a [1024 x 50, 128] activation is
    26 MB); by default glibc serves such blocks with fresh mmaps, or trims them off the heap when
    freed, so every step pays page faults to get them back.  A fixed mmap threshold of 256 MB
    and a trim threshold of 1 GB keep them in the heap: the same values, less system time.
    No-op (False) off glibc, or with ``LCRON_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("LCRON_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 256 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def environment(device: torch.device) -> dict[str, Any]:
    import pandas
    import pyarrow

    env = {"python": sys.version.split()[0], "platform": platform.platform(),
           "torch": torch.__version__, "numpy": np.__version__, "pandas": pandas.__version__,
           "pyarrow": pyarrow.__version__, "device": str(device),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "git_commit": git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


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


def torch_load_error(path: Path, e: Exception, what: str) -> UsageError:
    """One line for a file ``torch.load(weights_only=True)`` refused or could not read.

    torch's own message suggests reloading with weights_only=False, which would run whatever
    the file names: never repeat that; say what was refused instead."""
    import re

    text = str(e)
    m = re.search(r"(?:unsupported|Unsupported global:?) (?:GLOBAL )?([\w.]+)", text)
    if m is not None and "." in m.group(1):
        return UsageError(f"{path}: refused to load {what}: it names {m.group(1).rstrip('.')}, "
                          "which is not a tensor or a plain container; it is not a file this "
                          "program wrote, and loading it any other way could run code")
    if "Weights only load failed" in text:
        u = re.search(r"(Unsupported [^\n]*)", text)
        return UsageError(f"{path}: cannot load {what}: its content is not tensors and plain "
                          f"containers{f' ({u.group(1).strip()})' if u else ''}; corrupt, or not "
                          "a file this program wrote")
    first = text.splitlines()[0][:200] if text else ""
    return UsageError(f"{path}: cannot load {what} ({type(e).__name__}: {first}); truncated or "
                      "corrupt?")
