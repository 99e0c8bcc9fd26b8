"""Mixed precision (``--precision fp32|bf16|fp16``): the towers run under autocast, everything the
paper's numbers depend on stays float32.

``fp32`` (default) is exactly the plain path: autocast disabled, no scaler.  ``bf16`` and ``fp16``
run the towers' products under ``torch.autocast`` on the run's device (CUDA, or the CPU, where
bf16 uses AVX512-BF16 / AMX when the CPU has them); the scores are cast to float32 before the
loss, so every loss, its labels and the metrics are float32, and DIN's attention kernel runs in
float32 (``models._PairAttention``).  ``fp16`` scales the loss with a gradient scaler (its range
is too small for unscaled gradients); a step whose scaled gradients overflow is skipped by the
scaler, which then lowers the scale, as torch.amp does.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """The context the towers' forward runs in."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> "torch.amp.GradScaler | None":
    """fp16's gradient scaler (None for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
