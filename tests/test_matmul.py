"""The fp32 products' backends (deep_components.matmul) against the plain F.linear path, and the
towers' row MLPs against nn.Sequential."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deep_components import matmul
from deep_components.models import DIN, DSSM, MLP, RowMLP, mlp
from test_models import SMALL, _batch

needs_onednn = pytest.mark.skipif(not matmul.onednn_available(), reason="torch without oneDNN")


@pytest.fixture
def backend():
    """Set matmul's backend for one test (every input size takes it); restored afterwards."""
    was, rows = matmul.backend(), matmul.MIN_ROWS

    def use(name: str, min_rows: int = 1) -> None:
        matmul.set_backend(name)
        matmul.MIN_ROWS = min_rows

    yield use
    matmul.set_backend(was)
    matmul.MIN_ROWS = rows


def _linear_case(M=300, K=37, N=19, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(N, K, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(N, generator=g, dtype=dtype, requires_grad=True) if bias else None
    up = torch.randn(M, N, generator=g, dtype=dtype)
    return x, w, b, up


def _value_and_grads(fn, x, w, b, up):
    leaves = [t for t in (x, w, b) if t is not None]
    for t in leaves:
        t.grad = None
    y = fn(x, w, b)
    (y * up).sum().backward()
    return [y.detach()] + [t.grad.clone() for t in leaves]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_the_plain_product_to_float32_rounding(backend, bias):
    """Value and the three gradients of oneDNN's path against the float64 product: as close as
    MKL's own float32 result is (the same products, another accumulation order)."""
    x, w, b, up = _linear_case(bias=bias)
    exact = _value_and_grads(F.linear, *(t.detach().double().requires_grad_(True) if t is not None
                                         else None for t in (x, w, b)), up.double())
    backend("onednn")
    assert matmul._takes_onednn(x, w)
    dnn = _value_and_grads(matmul.linear, x, w, b, up)
    plain = _value_and_grads(F.linear, x, w, b, up)
    for d, p, e in zip(dnn, plain, exact):
        scale = e.abs().max().item()
        err_dnn = (d.double() - e).abs().max().item() / scale
        err_plain = (p.double() - e).abs().max().item() / scale
        assert err_dnn < 2e-6 and err_plain < 2e-6, (err_dnn, err_plain)
        assert scale > 1.0


def test_float64_and_small_inputs_take_the_plain_path_bit_for_bit(backend):
    """oneDNN has no float64 product: the backend's float64 result is F.linear's, exactly; so are
    inputs below MIN_ROWS rows."""
    backend("onednn")
    x, w, b, up = _linear_case(dtype=torch.float64)
    assert not matmul._takes_onednn(x, w)
    for a, c in zip(_value_and_grads(matmul.linear, x, w, b, up), _value_and_grads(F.linear, x, w, b, up)):
        assert torch.equal(a, c)
    backend("onednn", min_rows=301)
    x, w, b, up = _linear_case()
    assert not matmul._takes_onednn(x, w)
    for a, c in zip(_value_and_grads(matmul.linear, x, w, b, up), _value_and_grads(F.linear, x, w, b, up)):
        assert torch.equal(a, c)


@needs_onednn
def test_autocast_and_3d_inputs(backend):
    backend("onednn")
    x, w, b, _ = _linear_case(M=60)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not matmul._takes_onednn(x, w)
        assert matmul.linear(x, w, b).dtype == torch.bfloat16    # autocast's own product
    x3 = x.detach().view(6, 10, 37)
    y3 = matmul.linear(x3, w.detach(), b.detach())
    assert y3.shape == (6, 10, 19)
    assert torch.allclose(y3, F.linear(x3, w.detach(), b.detach()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [DSSM, MLP, DIN])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 0.0), (torch.float32, 1e-5)])
def test_towers_give_the_same_values_and_gradients_on_each_backend(backend, cls, dtype, tol):
    """Whole towers, forward and every parameter's gradient, MKL against oneDNN: float64 is the
    plain path bit for bit; float32 agrees to rounding."""
    if dtype == torch.float32 and not matmul.onednn_available():
        pytest.skip("torch without oneDNN")
    torch.manual_seed(0)
    a = cls(SMALL).to(dtype)
    b = copy.deepcopy(a)
    batch = _batch()
    results = []
    for m, name in ((a, "mkl"), (b, "onednn")):
        backend(name)
        y = m(*batch)
        (y.sin().sum()).backward()
        results.append(y.detach())
    ya, yb = results
    assert torch.allclose(ya, yb, rtol=0, atol=tol * ya.abs().max().item())
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert p.grad is not None and q.grad is not None, n
        assert torch.allclose(p.grad, q.grad, rtol=0, atol=tol * max(p.grad.abs().max().item(), 1e-3)), n


def test_row_mlp_is_nn_sequential_bit_for_bit_without_copy_slices():
    """RowMLP computes what nn.Sequential computes over a 3-D input, bit for bit, value and
    gradients; its in-place ReLUs need no CopySlices / AsStrided nodes in autograd."""
    torch.manual_seed(0)
    net = mlp([16, 32, 8, 1])
    assert isinstance(net, RowMLP)
    seq = nn.Sequential(*copy.deepcopy(list(net)))
    x1 = torch.randn(5, 7, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = net(x1), seq(x2)
    assert torch.equal(y1, y2) and y1.shape == (5, 7, 1)

    def nodes(fn, seen=None):
        seen = set() if seen is None else seen
        if fn is not None and fn not in seen:
            seen.add(fn)
            for nxt, _ in fn.next_functions:
                nodes(nxt, seen)
        return {type(f).__name__ for f in seen}

    assert "CopySlices" not in nodes(y1.grad_fn)
    assert "CopySlices" in nodes(y2.grad_fn)            # what nn.Sequential builds
    y1.sum().backward()
    y2.sum().backward()
    assert torch.equal(x1.grad, x2.grad)
    for p, q in zip(net.parameters(), seq.parameters()):
        assert torch.equal(p.grad, q.grad)
    # a view as input (the split first layer's output): the first ReLU is out of place
    base = torch.randn(4, 3, 32, requires_grad=True)
    h = net[1:](base * 1.0)
    assert h.shape == (4, 3, 1) and "CopySlices" not in nodes(h.grad_fn)


def test_auto_choice_by_vendor_and_device(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(matmul, "onednn_available", lambda: True)
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")
    assert matmul.resolve("auto", cpu)[0] == "onednn"
    assert matmul.resolve("mkl", cpu)[0] == "mkl"
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "GenuineIntel")
    assert matmul.resolve("auto", cpu)[0] == "mkl"
    assert matmul.resolve("onednn", cpu)[0] == "onednn"
    assert matmul.resolve("onednn", torch.device("cuda", 0))[0] == "mkl"     # CPU-only choice
    monkeypatch.setattr(matmul, "onednn_available", lambda: False)
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")
    assert matmul.resolve("auto", cpu)[0] == "mkl"
    with pytest.raises(ValueError, match="no oneDNN"):
        matmul.resolve("onednn", cpu)
    with pytest.raises(ValueError, match="--matmul must be one of"):
        matmul.resolve("blas", cpu)


def test_select_line_is_recorded():
    was = matmul.backend()
    try:
        line = matmul.select("mkl", torch.device("cpu"))
        assert line.startswith("MKL fp32 products") and matmul.selected() == line
        assert matmul.backend() == "mkl"
    finally:
        matmul.set_backend(was)


@needs_onednn
def test_a_weight_updated_in_place_is_read_again(backend):
    """The optimiser updates weights in place between steps: oneDNN's product must read the new
    values (no reordered copy kept from an earlier call)."""
    backend("onednn")
    x, w, b, _ = _linear_case(M=500)
    x, w, b = x.detach(), w.detach(), b.detach()
    first = matmul.linear(x, w, b)
    w.add_(0.25)
    b.sub_(1.0)
    again = matmul.linear(x, w, b)
    assert not torch.allclose(first, again)
    assert torch.allclose(again, F.linear(x, w, b), rtol=1e-5, atol=1e-4)
