"""Native CPU kernels (deep_components.kernels) against the PyTorch paths they replace: values
and gradients in float64 and float32, bit-identical embedding gradients, thread-count
independence, the fallback without a compiler, and the build cache."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from deep_components import kernels
from deep_components.models import DIN, MLP, _PairAttention

from test_models import SMALL, _batch
import json
import subprocess
import sys
from pathlib import Path
from deep_components.config import RunConfig
from deep_components.training import train

pytestmark = pytest.mark.skipif(kernels.native_library() is None,
                                reason=f"no native kernels here: {kernels.describe()}")


@pytest.fixture
def mode():
    """Set the kernel mode for one test; the default comes back afterwards."""
    before = kernels.get_mode()
    yield kernels.set_mode
    kernels.set_mode(before)


def _attention_case(dtype, B=9, N=7, H=50, D=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, D, generator=g, dtype=dtype)
    h = torch.randn(B, H, D, generator=g, dtype=dtype)
    w = torch.randn(D, generator=g, dtype=dtype)
    lengths = torch.tensor([1, 50, 3, 17, 49, 2, 33, 8, 25])[:B]
    valid = (torch.arange(H) >= H - lengths[:, None])[:, None, :].expand(B, N, H)
    grad = torch.randn(B, N, H, generator=g, dtype=dtype) * valid   # the caller masks padded rows
    return q, h, w, lengths, valid, grad


def _attention(q, h, w, lengths, grad, chunk=4):
    q, h, w = (t.clone().requires_grad_() for t in (q, h, w))
    out = _PairAttention.apply(q, h, w, lengths, chunk)
    return (out, *torch.autograd.grad(out, (q, h, w), grad))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_native_attention_matches_torch_path(mode, dtype, tol, chunk):
    q, h, w, lengths, valid, grad = _attention_case(dtype)
    mode("torch")
    ref = _attention(q, h, w, lengths, grad, chunk)
    mode("native")
    nat = _attention(q, h, w, lengths, grad, chunk)
    assert (nat[0][~valid] == 0).all()                       # padded rows: exactly 0
    for name, a, b in zip(("out", "gq", "gh", "gw"), (ref[0] * valid, *ref[1:]), nat):
        scale = a.abs().max().item()
        assert scale > 0.1, name                             # real values, not all zeros
        assert (a - b).abs().max().item() <= tol * scale, (name, (a - b).abs().max().item())


def test_native_attention_gradcheck(mode):
    mode("native")
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 1, 3])
    valid = (torch.arange(5) >= 5 - lengths[:, None])[:, None, :].expand(3, 4, 5)
    # the ReLU kink has measure zero; these random inputs keep |q + h| well away from it
    assert (q.unsqueeze(2) + h.unsqueeze(1)).abs().min() > 1e-3
    f = lambda q, h, w: _PairAttention.apply(q, h, w, lengths, 2) * valid
    assert torch.autograd.gradcheck(f, (q, h, w))


def test_native_attention_does_not_depend_on_threads(mode):
    mode("native")
    q, h, w, lengths, _, grad = _attention_case(torch.float32, B=9)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _attention(q, h, w, lengths, grad)
        torch.set_num_threads(3)
        three = _attention(q, h, w, lengths, grad)
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows,padding_idx", [(9, 0), (62, 0), (5000, 2), (5000, None)])
def test_native_embedding_gradient_is_bit_identical(mode, dtype, rows, padding_idx):
    g = torch.Generator().manual_seed(rows)
    ids = torch.randint(0, rows, (64, 50), generator=g)
    ids[:, :5] = 0 if padding_idx is None else padding_idx   # many hits on the padding row
    grad = torch.randn(64, 50, 8, generator=g, dtype=dtype)
    ref = torch.ops.aten.embedding_dense_backward(grad, ids, rows, -1 if padding_idx is None
                                                  else padding_idx, False)
    nat = kernels.embedding_backward(kernels.native_library(), grad, ids, rows, padding_idx)
    assert torch.equal(ref, nat)
    assert nat.abs().sum() > 0


@pytest.mark.parametrize("cls", [DIN, MLP])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-4)])
def test_tower_native_matches_torch_path(mode, cls, dtype, tol):
    """Whole towers, forward and every parameter's gradient, native kernels on vs off."""
    torch.manual_seed(0)
    a = cls(SMALL).to(dtype)
    b = copy.deepcopy(a)
    batch = _batch()
    mode("torch")
    ya = a(*batch)
    (ya.sin().sum()).backward()
    mode("native")
    yb = b(*batch)
    (yb.sin().sum()).backward()
    assert torch.allclose(ya, yb, rtol=0, atol=tol * ya.abs().max().item())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert p.grad is not None and q.grad is not None, n
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=tol * max(p.grad.abs().max().item(), 1e-3)), n


def test_fallback_without_compiler(monkeypatch, tmp_path, mode):
    """No compiler and no cached library: auto falls back (and says why), native refuses."""
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setenv("LCRON_KERNEL_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    mode("auto")
    assert kernels.native_library() is None
    assert kernels.describe().startswith("PyTorch fallback (no C++ compiler")
    q, h, w, lengths, valid, grad = _attention_case(torch.float64)
    out = _attention(q, h, w, lengths, grad)                 # the PyTorch path still runs
    dense = (torch.relu(q.unsqueeze(2) + h.unsqueeze(1)) @ w) * valid        # [B, N, H] by hand
    assert torch.allclose(out[0] * valid, dense, rtol=0, atol=1e-12) and dense.abs().max() > 0.1
    mode("native")
    with pytest.raises(kernels.KernelError, match="--kernels native: PyTorch fallback"):
        kernels.native_library()


def test_build_is_cached(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setenv("LCRON_KERNEL_DIR", str(tmp_path))
    assert kernels.native_library() is not None
    built = list(tmp_path.glob("lcron-native-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob(".*"))   # no temporary file left behind
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_status", None)
    assert kernels.native_library() is not None
    assert built[0].stat().st_mtime_ns == stamp and "native C++" in kernels.describe()


def test_runs_with_either_path_agree_and_say_which_ran(tiny_root, tmp_path, mode):
    """Training with --kernels auto and torch: the same losses (up to float rounding), and the
    run folder names the path that ran."""


    logs = {}
    for k in ("auto", "torch"):
        cfg = RunConfig(setting="two_stage", method="lcron", batch_size=32, data_dir=str(tiny_root),
                        run_dir=str(tmp_path / k), progress=False, device="cpu", max_steps=6,
                        kernels=k)
        run = train(cfg)
        logs[k] = [json.loads(x)["loss"] for x in (run / "loss_log.jsonl").read_text().splitlines()]
        env = json.loads((run / "env.json").read_text())
        summary = json.loads((run / "train_summary.json").read_text())
        assert env["kernels"] == summary["kernels"]
        assert env["kernels"].startswith("native C++" if k == "auto" else "PyTorch (--kernels torch)")
    assert len(logs["auto"]) == 6
    assert logs["auto"] == pytest.approx(logs["torch"], rel=1e-4)


def test_kernels_native_without_compiler_is_one_error_line(tiny_root, tmp_path):

    repo = Path(__file__).resolve().parent.parent
    env = {"PATH": str(tmp_path), "LCRON_KERNEL_DIR": str(tmp_path / "k"), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "deep_components/run_train2.py", "--data_dir", str(tiny_root),
                        "--run_dir", str(tmp_path / "run"), "--batch_size", "32", "--max_steps", "1",
                        "--no_progress", "--device", "cpu", "--kernels", "native"],
                       cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --kernels native: PyTorch fallback (no C++ compiler found ($CXX, c++, g++, clang++))"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_kendall_is_bit_identical(mode, dtype):
    from deep_components import metrics as M

    rng = np.random.default_rng(3)
    R, N = 700, 50
    s = (rng.integers(0, 6, (R, N)) if dtype == np.float64 else rng.normal(size=(R, N))).astype(dtype)
    lab = rng.integers(0, 4, (R, N))
    mask = rng.random((R, N)) < 0.8
    mask[:3] = False                 # no valid slot
    mask[3] = False
    mask[3, 7] = True                # one valid slot
    lab[4] = 2                       # constant labels
    s[5, :] = np.nan                 # a NaN score
    mode("torch")
    ref = M.kendall_tau(s, lab, mask)
    mode("native")
    nat = M.kendall_tau(s, lab, mask)
    assert np.array_equal(ref, nat, equal_nan=True)
    assert np.isnan(nat[:6]).all() and not np.isnan(nat[6:]).any()
    assert 0.05 < np.abs(nat[6:]).max() <= 1


def test_k31_a_corrupt_cached_library_is_rebuilt(monkeypatch, tmp_path):
    from deep_components import kernels

    if kernels._compiler() is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_status", None)
    monkeypatch.setenv("LCRON_KERNEL_DIR", str(tmp_path))
    assert kernels.native_library() is not None
    lib = next(tmp_path.glob("lcron-native-*.so"))
    good = lib.read_bytes()
    lib.unlink()                    # a new file: this process still maps the library it loaded
    lib.write_bytes(good[: len(good) // 3])                     # truncated
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_status", None)
    kernels.set_mode("auto")
    assert kernels.native_library() is not None and kernels.describe().startswith("native C++")
    assert kernels._intact(lib) and len(lib.read_bytes()) == len(good)      # rebuilt whole
