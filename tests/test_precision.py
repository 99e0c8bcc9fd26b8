"""--precision (deep_components.precision)."""
from __future__ import annotations

import torch


def test_autocast_fp32_is_the_plain_path():
    from deep_components.precision import autocast, grad_scaler

    with autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert grad_scaler("fp32", torch.device("cpu")) is None
    assert grad_scaler("fp16", torch.device("cpu")) is not None
