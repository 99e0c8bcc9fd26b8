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


class UsageError(Exception):
    """A problem the user can fix by changing a flag; entry points print it and exit 2."""


class TrainingError(Exception):
    """Training had to stop (e.g. a non-finite loss); entry points print it and exit 3."""


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
        return torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name}: {e}") from None


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


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
