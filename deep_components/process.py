"""The process a run executes in: seeding, glibc's malloc tuning, and what env.json records of
the machine (versions, device, threads, git revision)."""
from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
