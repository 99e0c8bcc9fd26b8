"""The ``--device`` flag: which torch device a run uses."""
from __future__ import annotations

import torch

from .errors import UsageError


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
