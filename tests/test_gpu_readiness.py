"""What can be checked of the CUDA path on a machine without a GPU: device-free checkpoints and
RNG states, device errors before any work, one host read per training step, mixed precision end
to end, DIN's CUDA attention path against the CPU ones, faiss's GPU limits, the benchmark's
device, and the CPU half of bench/gpu_check.py."""
from __future__ import annotations

import datetime
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deep_components import cli
from deep_components.config import RunConfig
from deep_components.run_folder import RunFolder
from deep_components.errors import UsageError
from deep_components.training import Trainer, train

REPO = Path(__file__).resolve().parent.parent


def _cfg(root, run_dir, **kw):
    return RunConfig(**({"data_dir": str(root), "run_dir": str(run_dir), "batch_size": 32,
                         "progress": False, "device": "cpu"} | kw))


# ------------------------------------------------------------------- checkpoints, RNG states
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


# -------------------------------------------------------------------- device errors up front
def _fake_gpus(monkeypatch, n):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_a_device_beyond_the_count_is_one_line(tiny_root, tmp_path, monkeypatch, capsys):
    _fake_gpus(monkeypatch, 1)
    rc = cli.main("two_stage", "train", ["--data_dir", str(tiny_root), "--run_dir",
                                         str(tmp_path / "r"), "--device", "cuda:7"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --device cuda:7: this machine has 1 CUDA device(s) (cuda:0)"]
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_7_without_cuda_is_one_line(tiny_root, tmp_path):
    r = subprocess.run([sys.executable, "deep_components/run_train2.py", "--data_dir", str(tiny_root),
                        "--run_dir", str(tmp_path / "r"), "--device", "cuda:7"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --device cuda:7: CUDA is not available on this machine (use --device cpu or auto)"]


def _torchrun_env(monkeypatch, local_rank, per_node):
    for k, v in {"WORLD_SIZE": str(per_node), "RANK": str(local_rank),
                 "LOCAL_RANK": str(local_rank), "LOCAL_WORLD_SIZE": str(per_node)}.items():
        monkeypatch.setenv(k, v)


def test_torchrun_with_more_processes_than_gpus_is_one_line(tiny_root, tmp_path, monkeypatch,
                                                            capsys):
    import torch.distributed as dist

    import deep_components.distributed as D

    _fake_gpus(monkeypatch, 2)
    _torchrun_env(monkeypatch, 3, 4)
    monkeypatch.setattr(D, "_CONTEXT", None)
    monkeypatch.setattr(dist, "init_process_group", lambda **k: pytest.fail("joined a group"))
    rc = cli.main("two_stage", "train", ["--data_dir", str(tiny_root), "--run_dir",
                                         str(tmp_path / "r"), "--device", "cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        "error: torchrun started 4 processes on this node but it has 2 GPU(s) (local rank 3 has "
        "none); use --nproc_per_node=2 or fewer"]
    assert not (tmp_path / "r").exists()


def test_the_process_group_waits_as_long_as_dist_timeout(monkeypatch):
    import torch.distributed as dist

    import deep_components.distributed as D

    _torchrun_env(monkeypatch, 0, 2)
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


# ------------------------------------------------------------------------- host reads per step
@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
@pytest.mark.parametrize("method", ["lcron", "fs_ranknet", "rankflow", "arf_v2"])
def test_one_host_read_per_training_step(tiny_root, tmp_path, monkeypatch, setting, method):
    """At the default --print_freq, a training step reads the device once: its finite flag
    (the loss values come along with it every print_freq steps and at the day's end)."""
    from deep_components.syncs import host_reads

    counts = []
    real = Trainer.train_day

    def counted(self, *a, **k):
        with host_reads() as c:
            out = real(self, *a, **k)
        counts.append(c)
        return out

    monkeypatch.setattr(Trainer, "train_day", counted)
    run = train(_cfg(tiny_root, tmp_path / "run", setting=setting, method=method))
    steps = RunFolder(run).summary()["steps"]
    assert steps == 27 and sum(c.count for c in counts) == steps, [c.where for c in counts]
    assert len(RunFolder(run).read_loss_log()) == steps


# -------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
def test_mixed_precision_trains_with_fp32_losses(tiny_root, tmp_path, monkeypatch, precision, setting):
    from deep_components.loss.lcron import LCRONLoss

    dtypes = []
    real = LCRONLoss.compute

    def spy(self, logits, labels, mask):
        out = real(self, logits, labels, mask)
        dtypes.append({s.dtype for s in logits} | {labels.dtype, out["e2e"].dtype, out["loss"].dtype})
        return out

    monkeypatch.setattr(LCRONLoss, "compute", spy)
    run = train(_cfg(tiny_root, tmp_path / precision, setting=setting, precision=precision))
    log = RunFolder(run).read_loss_log()
    assert len(log) == 27 and all(math.isfinite(r["loss"]) and math.isfinite(r["e2e"]) for r in log)
    assert dtypes and all(d == {torch.float32} for d in dtypes)
    assert log[-1]["loss"] < log[0]["loss"]
    base = RunFolder(train(_cfg(tiny_root, tmp_path / "fp32", setting=setting))).read_loss_log()
    assert base[0]["loss"] == pytest.approx(log[0]["loss"], rel=2e-2)    # the same model, rounded
    assert base[-1]["loss"] != log[-1]["loss"]
    ckpt = RunFolder(run).load_checkpoint()
    assert ckpt["meta"]["precision"] == precision and (("scaler" in ckpt) == (precision == "fp16"))


def test_a_checkpoint_resumes_only_in_its_precision(tiny_root, tmp_path):
    train(_cfg(tiny_root, tmp_path / "run", max_steps=3, precision="bf16"))
    with pytest.raises(UsageError, match="precision: checkpoint 'bf16', this run 'fp32'"):
        train(_cfg(tiny_root, tmp_path / "run", resume=True))
    train(_cfg(tiny_root, tmp_path / "run", resume=True, precision="bf16", max_steps=5))


def test_autocast_fp32_is_the_plain_path():
    from deep_components.precision import autocast, grad_scaler

    with autocast("fp32", torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert grad_scaler("fp32", torch.device("cpu")) is None
    assert grad_scaler("fp16", torch.device("cpu")) is not None


def test_masked_logit_stays_fp32_under_fp16_autocast():
    """DIN's attention logits and their mask value are float32 under autocast (the mask value
    -(2**30 - 1) would overflow fp16), and its attention kernel runs in float32."""
    from deep_components import kernels
    from deep_components.models import DIN

    torch.manual_seed(0)
    counts = {k: 50 for k in ("user_id", "device_id", "gender", "age", "province", "video_id",
                              "author_id", "category_level_one", "category_level_two", "upload_type")}
    din = DIN(counts)
    B, H, N = 3, 6, 4
    ctx = torch.randint(1, 5, (B, 8), dtype=torch.int32)
    hist = torch.randint(1, 20, (B, H, 5), dtype=torch.int32)
    mask = torch.zeros(B, H, dtype=torch.bool)
    mask[:, 3:] = True
    items = torch.randint(1, 7, (B, N, 8), dtype=torch.int32)
    seen = []
    real = din.attention_logits
    din.attention_logits = lambda *a: seen.append(real(*a)) or seen[-1]
    before = kernels.get_mode()
    try:
        for mode in ("native", "torch"):
            if mode == "native" and kernels.native_library() is None:
                continue
            kernels.set_mode(mode)
            with torch.autocast("cpu", dtype=torch.float16):
                out = din(ctx, hist, mask, items)
            assert torch.isfinite(out).all() and seen[-1].dtype == torch.float32
    finally:
        kernels.set_mode(before)


# ---------------------------------------------------------------- DIN's attention on CUDA
def test_the_cuda_attention_path_equals_the_cpu_paths(monkeypatch):
    """The CUDA path (contiguous request slices over all H rows, no host index) gives the values
    and gradients of the sorted-chunk path, float64 to 1e-12; taken on the CPU here."""
    from deep_components import kernels
    from deep_components.models import _PairAttention

    g = torch.Generator().manual_seed(0)
    B, N, H, D = 11, 5, 9, 6
    q, h = torch.randn(B, N, D, generator=g, dtype=torch.float64), torch.randn(B, H, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, generator=g, dtype=torch.float64)
    lengths = torch.tensor([1, 9, 3, 5, 9, 2, 7, 4, 8, 6, 1])
    valid = (torch.arange(H) >= H - lengths[:, None])[:, None, :].expand(B, N, H)
    grad = torch.randn(B, N, H, generator=g, dtype=torch.float64) * valid

    def run():
        qq, hh, ww = (t.clone().requires_grad_() for t in (q, h, w))
        out = _PairAttention.apply(qq, hh, ww, lengths, 4)
        return (out, *torch.autograd.grad(out, (qq, hh, ww), grad))

    before = kernels.get_mode()
    kernels.set_mode("torch")
    try:
        ref = run()
        monkeypatch.setattr(_PairAttention, "slices_on_cpu", True)
        monkeypatch.setattr(_PairAttention, "DEVICE_SLICE_ELEMENTS", 3 * N * H * D)   # 4 slices
        assert len(_PairAttention._slices(q, h)) == 4
        dev = run()
    finally:
        kernels.set_mode(before)
    assert (dev[0][~valid] == 0).all()       # the sorted path leaves padded rows unspecified
    for a, b in zip((ref[0] * valid, *ref[1:]), dev):
        assert a.abs().max() > 0.1 and (a - b).abs().max() <= 1e-12


# ------------------------------------------------------------------------------- faiss, GPU
def test_serve_refuses_a_keep_beyond_the_gpu_index(monkeypatch, tiny_root, tmp_path, capsys):
    from deep_components import serve

    pytest.importorskip("faiss")
    run = train(_cfg(tiny_root, tmp_path / "run", max_steps=2))
    monkeypatch.setattr(serve, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(serve, "index_device", lambda kind, device: ("cuda", None))
    assert serve.main(["--run_dir", str(run), "--device", "cuda", "--keep", "5000", "10"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --keep 5000: a faiss GPU index searches at most 2048 neighbours; keep at most "
        "2048 from the index, or serve with --device cpu"]
    serve.check_index_k("exact", torch.device("cuda"), 2048)              # the limit itself is fine
    assert not (run / "catalogue_metrics.json").exists()


def test_the_index_device_says_why_it_is_not_the_gpu():
    from deep_components import serve

    faiss = pytest.importorskip("faiss")
    cuda = torch.device("cuda")
    assert serve.index_device("exact", torch.device("cpu")) == ("cpu", None)
    assert serve.index_device("ivf", cuda) == ("cpu", "the ivf index runs on the CPU (only the "
                                                      "exact index moves to the GPU)")
    where, why = serve.index_device("exact", cuda)
    if hasattr(faiss, "StandardGpuResources"):
        assert (where, why) == ("cuda", None)
    else:
        assert where == "cpu" and why.startswith("faiss-gpu is not installed")


def test_the_throughput_bench_times_its_own_device():
    src = (REPO / "bench" / "throughput.py").read_text()
    assert "torch.cuda.synchronize(device)" in src and "reset_peak_memory_stats(device)" in src
    assert "synchronize()" not in src.replace("synchronize(device)", "")


# ------------------------------------------------------------------ the device check, CPU half
def test_gpu_check_cpu_half(tmp_path):
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick",
                        "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO,
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    md = out.read_text()
    for section in ("## Entry points", "## Parity", "## Throughput", "## Host reads per step"):
        assert section in md, section
    rows = [x for x in md.splitlines() if x.startswith("| ") and ("| ok |" in x or "| FAILED |" in x)]
    assert len(rows) >= 9 and all("| ok |" in x for x in rows), "\n".join(rows)
    parity = next(x for x in md.splitlines() if x.startswith("| max abs difference"))
    assert float(parity.split("|")[2]) == 0.0            # cpu against cpu: identical
    reads = [x for x in md.splitlines() if x.startswith("| host reads per step")]
    assert reads and all(float(x.split("|")[2]) <= 1.0 for x in reads)
