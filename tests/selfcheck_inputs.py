"""The deterministic inputs of METHODS.md §11 (shared by the loss and metric tests)."""
from __future__ import annotations

import torch

from deep_components.cascade import CascadeSpec


def selfcheck_inputs(spec: CascadeSpec, dtype=torch.float32):
    """(logits list of T [2, N] leaf tensors, labels [2, N], mask [2, N] all True)."""
    B, N, T = 2, spec.num_slots, spec.num_stages
    labels = torch.zeros(B, N, dtype=dtype)
    for a in range(10):
        labels[0, a] = 30 - (3 * a) % 10
        labels[1, a] = 30 - (7 * a + 2) % 10
    for g, lab in enumerate(spec.negative_labels()):
        labels[:, 10 * (g + 1):10 * (g + 2)] = lab
    i = torch.arange(N, dtype=dtype)
    logits = [torch.stack([2 * torch.sin(0.37 * (i + 1) * t + 1.1 * b) + 0.01 * i
                           for b in range(B)]).requires_grad_() for t in range(1, T + 1)]
    return logits, labels, torch.ones(B, N, dtype=torch.bool)
