"""The fp32 products of the towers' Linear layers on the CPU: MKL (torch's default) or oneDNN.

torch sends a float32 ``addmm``/``mm`` on x86 to MKL.  On AMD CPUs MKL does not take its
fastest code path (it runs its generic kernels, ``mkl_blas_def_*``), while oneDNN, which torch
also ships, dispatches on the CPU's instruction set whatever its vendor.  On the towers' tall
products ([B x N, in] x [in, out] with B x N = 51,200) oneDNN is 1.2-1.7x faster there
(docs/performance.md, per shape); on Intel CPUs MKL's own path is about as fast as oneDNN's,
so ``auto`` keeps MKL there.

:func:`linear` is ``F.linear`` over rows: with the oneDNN backend, a float32 CPU input of at
least :data:`MIN_ROWS` rows runs its forward and its input gradient through oneDNN's inner
product (``torch.ops.mkldnn._linear_pointwise``) and its weight gradient ``g.T @ x`` and bias
gradient ``g.sum(0)`` as torch's own ``addmm`` backward computes them.  The same products, in
a library whose accumulation order may differ: values agree to float32 rounding
(tests/test_matmul.py).  Everything else — float64, CUDA, autocast, tracing for export, small
batches (where MKL is as fast) — is plain ``F.linear``.

Selection (``--matmul`` or :func:`select`): ``auto`` (oneDNN on an AMD CPU when torch has it,
MKL otherwise), ``mkl`` (torch's default path), ``onednn``.  What ran is in the run's env.json
and train_summary.json.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

MODES = ("auto", "mkl", "onednn")
#: rows below which the oneDNN path is not taken (MKL is as fast or faster on [1024, in])
MIN_ROWS = 4096

_backend = "mkl"                 # what linear() uses: "mkl" or "onednn"
_selected: str | None = None     # the line of the last select()


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The CPU's vendor id (``AuthenticAMD``, ``GenuineIntel``, ...), "" where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve(mode: str, device: torch.device) -> tuple[str, str]:
    """(backend, why) for ``mode`` on ``device``; ValueError for an unknown mode or an
    ``onednn`` torch cannot run."""
    if mode not in MODES:
        raise ValueError(f"--matmul must be one of {MODES}, got {mode!r}")
    if device.type != "cpu":
        return "mkl", f"{device.type}: torch's own products (the choice is CPU only)"
    vendor = cpu_vendor() or "unknown CPU vendor"
    if mode == "onednn":
        if not onednn_available():
            raise ValueError("--matmul onednn: this torch build has no oneDNN (mkldnn)")
        return "onednn", f"asked for ({vendor})"
    if mode == "mkl":
        return "mkl", f"asked for ({vendor})"
    if vendor == "AuthenticAMD" and onednn_available():
        return "onednn", "auto: AuthenticAMD, where MKL runs its generic kernels"
    return "mkl", f"auto: {vendor}"


def select(mode: str, device: torch.device) -> str:
    """Apply ``--matmul`` for a run on ``device``; returns the line that says what runs."""
    global _backend, _selected
    _backend, why = resolve(mode, device)
    _selected = f"{'oneDNN' if _backend == 'onednn' else 'MKL'} fp32 products ({why})"
    log.info("matmul: %s", _selected)
    return _selected


def set_backend(backend: str) -> None:
    """Set the backend directly ("mkl" or "onednn"), e.g. in tests."""
    global _backend
    if backend not in ("mkl", "onednn"):
        raise ValueError(f"backend must be 'mkl' or 'onednn', got {backend!r}")
    _backend = backend


def backend() -> str:
    return _backend


def selected() -> str | None:
    """The line of the last :func:`select`, or None."""
    return _selected


def tracing() -> bool:
    """Whether the towers are being traced for export (TorchScript or ONNX): the native
    kernels and oneDNN's product cannot be recorded, their plain-operator forms are."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _pointwise(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """oneDNN's ``x @ w.T + b``: x [M, K], w [N, K] (both contiguous), b [N] or None -> [M, N]."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """x [M, K], w [N, K], b [N] or None -> x @ w.T + b [M, N]; forward and input gradient by
    oneDNN, weight and bias gradients as ``addmm``'s backward computes them."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        x, w = x.contiguous(), w.contiguous()
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _pointwise(x, w, b)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        g = g.contiguous()
        gx = _pointwise(g, w.t().contiguous(), None) if ctx.needs_input_grad[0] else None
        gw = g.t().mm(x) if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _takes_onednn(x: Tensor, w: Tensor) -> bool:
    return (_backend == "onednn" and x.device.type == "cpu" and x.dtype == torch.float32
            and w.dtype == torch.float32 and x.dim() == 2 and x.shape[0] >= MIN_ROWS
            and not torch.is_autocast_enabled("cpu") and not tracing())


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for x [..., K], weight [N, K] -> [..., N], through the
    selected backend (oneDNN for large float32 CPU inputs, see the module's docstring)."""
    if _backend != "onednn":
        return F.linear(x, weight, bias)
    if x.dim() != 2:
        lead = x.shape[:-1]
        y = linear(x.reshape(-1, x.shape[-1]), weight, bias)
        return y.view(*lead, y.shape[-1])
    if _takes_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
