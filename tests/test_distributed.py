"""The torchrun process group (deep_components.distributed)."""
from __future__ import annotations

import datetime
import pytest
from deep_components.errors import UsageError
from helpers import torchrun_env


def test_the_process_group_waits_as_long_as_dist_timeout(monkeypatch):
    import torch.distributed as dist

    import deep_components.distributed as D

    torchrun_env(monkeypatch, 0, 2)
    got = {}
    monkeypatch.setattr(D, "_CONTEXT", None)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **k: got.update(k))
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    ctx, device = D.init_distributed("cpu", 45.0)
    assert got == {"backend": "gloo", "timeout": datetime.timedelta(minutes=45)}
    assert ctx.world == 2 and device == "cpu"
    ctx, _ = D.init_distributed("cpu")
    assert got["timeout"] == datetime.timedelta(minutes=120)       # the default covers RecFlow
    with pytest.raises(UsageError, match="--dist_timeout must be a positive number of minutes"):
        D.init_distributed("cpu", 0)
