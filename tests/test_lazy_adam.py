"""Adam on the rows a sparse gradient touches (deep_components.lazy_adam)."""
from __future__ import annotations

import pytest
import torch
from deep_components.config import RunConfig, validate
from deep_components.errors import UsageError
from deep_components.run_folder import RunFolder
from deep_components.training import train


def _cfg(root, runs, setting, method, **kw):
    return RunConfig(setting=setting, method=method, run_id=5, batch_size=32, data_dir=str(root),
                     runs_root=str(runs), progress=False, device="cpu", threads=1, **kw)



def test_lazy_adam_equals_adam_on_the_first_step_then_leaves_untouched_rows(tiny_root, tmp_path):
    runs = {}
    for opt in ("adam", "lazy_adam"):
        for steps in (1, 3):
            cfg = _cfg(tiny_root, tmp_path / f"{opt}{steps}", "two_stage", "lcron",
                       emb_optimizer=opt, max_steps=steps, ckpt_every=0)
            runs[opt, steps] = RunFolder(train(cfg)).load_towers(torch.device("cpu"))[0]
    for a, b in zip(runs["adam", 1], runs["lazy_adam", 1]):
        for k, v in a.state_dict().items():     # step 1: untouched rows have m = v = 0 in both
            assert torch.allclose(v, b.state_dict()[k], rtol=0, atol=1e-6), k
    moved = 0
    for a, b, a1 in zip(runs["adam", 3], runs["lazy_adam", 3], runs["adam", 1]):
        wa, wb = a.emb.tables["video_id"].weight, b.emb.tables["video_id"].weight
        moved += int((~torch.isclose(wa, wb, rtol=0, atol=1e-7)).any(-1).sum())
    assert moved > 0                            # dense Adam keeps moving rows with momentum
    log = tmp_path / "lazy_adam3" / "two_stage" / "lcron" / "run-5" / "loss_log.jsonl"
    assert len(log.read_text().splitlines()) == 3


def test_lazy_adam_is_refused_under_nccl(tiny_root, monkeypatch):
    import deep_components.distributed as D

    monkeypatch.setattr(D, "_CONTEXT", D.DistContext(rank=0, world=2, backend="nccl"))
    cfg = RunConfig(data_dir=str(tiny_root), emb_optimizer="lazy_adam", device="cpu", batch_size=32)
    with pytest.raises(UsageError, match="NCCL cannot all-reduce"):
        validate(cfg)
    monkeypatch.setattr(D, "_CONTEXT", D.DistContext(rank=0, world=2, backend="gloo"))
    validate(cfg)
