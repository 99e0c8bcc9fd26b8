"""Checkpoints and trained towers on disk (deep_components.checkpoint): loaded through the CPU, RNG states from anywhere."""
from __future__ import annotations

import random
import numpy as np
import pytest
import torch
from deep_components.run_folder import RunFolder
from deep_components.training import train
from deep_components.config import RunConfig


def _cfg(root, run_dir, **kw):
    return RunConfig(**({"data_dir": str(root), "run_dir": str(run_dir), "batch_size": 32,
                         "progress": False, "device": "cpu"} | kw))



def test_checkpoints_load_through_the_cpu(tiny_root, tmp_path, monkeypatch):
    """The checkpoint is loaded onto the CPU whatever device resumes it; the modules and
    optimisers then place each tensor on its parameter's device."""
    import deep_components.checkpoint as ck

    train(_cfg(tiny_root, tmp_path / "run", max_steps=3))
    seen = []
    real = ck.torch.load
    monkeypatch.setattr(ck.torch, "load", lambda *a, **k: seen.append(k.get("map_location")) or real(*a, **k))
    ckpt = RunFolder(tmp_path / "run").load_checkpoint()
    assert seen == ["cpu"]
    tensors = [t for sd in ckpt["models"] for t in sd.values()] + [ckpt["rng"]["torch"]]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    train(_cfg(tiny_root, tmp_path / "run", max_steps=5, resume=True))       # and resumes
    assert RunFolder(tmp_path / "run").summary()["steps"] == 5


@pytest.mark.parametrize("moved", ["int64", "float64", "map_location"])
def test_rng_state_restores_from_wherever_it_was_mapped(tmp_path, moved):
    """set_rng_state takes the generator states whatever dtype or location torch.load handed
    them back in (CUDA's loader, a map_location to a device, a cast)."""
    from deep_components.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = rng_state()
    want = (random.random(), np.random.rand(), torch.rand(4))
    if moved == "map_location":
        torch.save(state, tmp_path / "s.pt")
        state = torch.load(tmp_path / "s.pt", weights_only=True,
                           map_location=lambda storage, loc: storage)
    else:
        state = dict(state, torch=state["torch"].to(getattr(torch, moved)))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(4))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])
