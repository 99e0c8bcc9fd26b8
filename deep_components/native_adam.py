"""torch.optim.Adam's step in one native pass per tensor, the same bits as torch's own.

``torch.optim.Adam`` on the CPU runs its single-tensor form: seven tensor operations per
parameter, each a pass over memory (and three temporaries the size of the parameter).  For
embedding tables of millions of rows that is most of a training step.  :class:`NativeAdam` is
that optimiser, state and all (a checkpoint of one loads into the other), whose step calls the
native kernel (``native.cpp`` §4): value, gradient and both moments read and written once, the
same float operations in the same order, threads over rows.

Two things make it exact, and both are checked, not assumed (:func:`fast_path`): torch's
``sqrt`` is MKL's vector square root where torch is built with MKL (not correctly rounded for
every input), so the kernel calls that same function; and the kernel's result is compared bit
for bit with ``torch.optim.Adam`` on probe tensors (odd sizes, zero gradients, three steps)
before the first use.  Where the check fails, or for a tensor the kernel does not take (CUDA,
float64, sparse or non-contiguous gradient, options other than the paper's), the step is
``torch.optim.Adam.step`` itself.

**Rows never touched.**  A table row whose gradient has been zero since the start keeps zero
moments, and Adam then leaves its value as it is, bit for bit (``m = 0``, ``v = 0``,
``p + (-lr) · 0 / eps = p``).  :func:`track_rows` gives a model's large tables a mask of the rows
their gradients have reached (the lookups' backward marks it, deep_components.models.lookup);
the kernel updates the marked rows only, which is exactly the dense update.  A loaded optimiser state rebuilds the
masks from its moments (a row with any non-zero moment bit is marked).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Iterable

import torch
from torch import Tensor, nn

from . import kernels

log = logging.getLogger(__name__)

#: tables with at least this many rows get a touched-rows mask (smaller ones are updated whole)
MIN_TRACKED_ROWS = 65_536
_check: tuple[bool, int | None, str] | None = None     # (usable, sqrt function, why)


@functools.cache
def _mkl(name: str) -> int | None:
    """Address of MKL's function ``name`` in the process (torch's own copy), or None."""
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    candidates = [os.path.join(lib_dir, n) for n in ("libtorch_cpu.so", "libtorch_cpu.dylib")]
    for path in candidates + [None]:
        try:
            lib = ctypes.CDLL(path) if path is None or os.path.exists(path) else None
            if lib is not None:
                return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def _scalars(group: dict, step: float) -> tuple[float, ...]:
    """The six floats of torch's single-tensor step, computed as torch computes them."""
    beta1, beta2 = group["betas"]
    lr, eps = group["lr"], group["eps"]
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    return (1 - beta1, beta2, 1 - beta2, bias_correction2 ** 0.5, eps, -step_size)


#: the kernel's mask modes
EVERY_ROW, MARKED_ROWS_ONLY, SKIP_UNTOUCHED = 0, 1, 2


def _kernel_step(lib, p: Tensor, g: Tensor, m: Tensor, v: Tensor, mask: Tensor | None,
                 scalars: tuple[float, ...], vsqrt: int | None, mode: int = SKIP_UNTOUCHED) -> None:
    """One step of p [rows, ...] (float32, contiguous; g, m, v alike).  ``mask`` (uint8 [rows]):
    SKIP_UNTOUCHED — it marks every row whose gradient or moments may be non-zero (the result
    is the dense step's); MARKED_ROWS_ONLY — only the marked rows move (lazy Adam)."""
    if mask is None or p.dim() < 2:
        rows, dim, mask, mode = 1, p.numel(), None, EVERY_ROW
    else:
        rows, dim = p.shape[0], p[0].numel()
    ptr = kernels._ptr
    lib.adam_step_f32(ptr(p), ptr(g), ptr(m), ptr(v), None if mask is None else ptr(mask), rows, dim,
                      mode, *scalars, vsqrt,
                      # each of the kernel's ranges asks MKL for one thread (C interface name)
                      _mkl("MKL_Set_Num_Threads_Local") if vsqrt else None,
                      torch.get_num_threads())


def _probe(lib, vsqrt: int | None) -> bool:
    """The kernel (with ``vsqrt``) gives torch.optim.Adam's bits on probe tensors: sizes with
    vector tails, zero gradients, untouched rows under a mask, three steps."""
    gen = torch.Generator().manual_seed(12345)
    shapes = [(1,), (7,), (33,), (1001, 8), (4099, 8)]
    ref = [nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    ours = [p.detach().clone() for p in ref]
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ours]
    mask = torch.zeros(4099, dtype=torch.uint8)
    mask[torch.randperm(4099, generator=gen)[:2000]] = 1
    opt = torch.optim.Adam(ref, lr=0.01, foreach=False)
    for step in range(1, 4):
        grads = []
        for p in ref:
            g = torch.randn(p.shape, generator=gen) * 10.0 ** -(step % 3)
            g[torch.rand(p.shape, generator=gen) < 0.3] = 0
            if p.shape == (4099, 8):
                g[mask == 0] = 0
            p.grad = g.clone()
            grads.append(g)
        opt.step()
        sc = _scalars(opt.param_groups[0], float(step))
        for p, g, (m, v) in zip(ours, grads, moments):
            _kernel_step(lib, p, g, m, v, mask if p.shape == (4099, 8) else None, sc, vsqrt)
    return all(torch.equal(a.detach(), b) and torch.equal(opt.state[a]["exp_avg"], m)
               and torch.equal(opt.state[a]["exp_avg_sq"], v)
               for a, b, (m, v) in zip(ref, ours, moments))


def fast_path() -> tuple[bool, str]:
    """(whether the native step is in use, why): the kernels load and give torch's bits."""
    global _check
    if kernels.native_library() is None:          # --kernels torch (or no compiler)
        return False, "native kernels not in use"
    if _check is None:
        lib = kernels.native_library()
        found = None
        for name, fn in (("MKL's sqrt, as torch", _mkl("vmsSqrt")), ("IEEE sqrt", None)):
            if (fn is not None or name == "IEEE sqrt") and _probe(lib, fn):
                found = (True, fn, f"native, bitwise torch.optim.Adam ({name})")
                break
        _check = found or (False, None, "native kernel's bits differ from torch.optim.Adam "
                                        "on this machine: torch's step is used")
        log.info("adam: %s", _check[2])
    return _check[0], _check[2]


class RowGrad:
    """A large table's gradient kept as a step's running sum, never as a fresh dense tensor.

    ``acc`` [rows, dim] is zero except on the rows this step's lookups touched; each lookup's
    backward adds its gradient as torch would add the lookups' dense gradients (kernels.
    embedding_backward_add), so ``acc`` is bit for bit the ``weight.grad`` torch would build, and
    the table's ``weight.grad`` stays None.  :class:`NativeAdam` reads it and :meth:`clear`
    zeroes the touched rows only."""

    def __init__(self, weight: Tensor):
        self.acc = torch.zeros_like(weight)
        self.slot = torch.full((weight.shape[0],), -1, dtype=torch.int32)
        self.ids: list[Tensor] = []          # this step's lookups (the rows acc may hold)

    def add(self, grad: Tensor, ids: Tensor, padding_idx: int | None,
            mark: Tensor | None = None) -> None:
        """Add one lookup's gradient (``mark``: uint8 [rows] to set on its rows)."""
        kernels.embedding_backward_add(kernels.native_library(), grad, ids, self.acc, self.slot,
                                       padding_idx, first=not self.ids, mark=mark)
        self.ids.append(ids.reshape(-1))

    def rows(self) -> Tensor:
        """The step's rows (with repeats) as one int64 tensor."""
        return torch.cat(self.ids).to(torch.int64) if self.ids else torch.zeros(0, dtype=torch.int64)

    def touched(self) -> Tensor:
        """The gradient rows this step may have set, [n, dim] (for the finite check)."""
        return self.acc.index_select(0, self.rows())

    def clear(self) -> None:
        if self.ids:
            self.acc.index_fill_(0, self.rows(), 0.0)
            self.ids.clear()


def _tables(model: nn.Module, min_rows: int = 0):
    """The embedding tables of ``model`` the native step can take: dense (not sparse), CPU,
    float32, at least ``min_rows`` rows."""
    return [m for m in model.modules()
            if isinstance(m, nn.Embedding) and not m.sparse and m.weight.shape[0] >= min_rows
            and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]


def attach_row_grads(model: nn.Module, min_rows: int | None = None) -> dict[Tensor, RowGrad]:
    """Give ``model``'s embedding tables of at least ``min_rows`` rows (default
    MIN_TRACKED_ROWS) a :class:`RowGrad` (``table.row_grad``); returns {weight: RowGrad}.  Needs
    the native step (:func:`fast_path`): without it nothing changes and {} is returned."""
    if not fast_path()[0]:
        return {}
    tables = _tables(model, MIN_TRACKED_ROWS if min_rows is None else min_rows)
    for mod in tables:
        mod.row_grad = RowGrad(mod.weight)
    return {mod.weight: mod.row_grad for mod in tables}


def attach_step_rows(model: nn.Module) -> dict[Tensor, Tensor]:
    """Give every embedding table of ``model`` a mask of the rows this step's gradient reaches
    (``table.step_rows``, uint8 [rows]: marked by the lookups' backward, cleared by
    NativeAdam.zero_grad): lazy Adam's rows."""
    tables = _tables(model)
    for mod in tables:
        mod.step_rows = torch.zeros(mod.weight.shape[0], dtype=torch.uint8)
    return {mod.weight: mod.step_rows for mod in tables}


def track_rows(model: nn.Module) -> dict[Tensor, Tensor]:
    """Give every embedding table of ``model`` with at least MIN_TRACKED_ROWS rows a mask of the
    rows its gradients have reached (``table.touched_rows``, uint8 [rows], marked by the lookups'
    backward, never cleared); returns {weight: mask}."""
    tables = _tables(model, MIN_TRACKED_ROWS)
    for mod in tables:
        mod.touched_rows = torch.zeros(mod.weight.shape[0], dtype=torch.uint8)
    return {mod.weight: mod.touched_rows for mod in tables}


def _nonzero_rows(t: Tensor) -> Tensor:
    """[rows] bool: rows with any bit set (so -0.0 counts)."""
    return t.reshape(t.shape[0], -1).view(torch.int32).ne(0).any(dim=1)


class NativeAdam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr)`` whose CPU float32 step is the native kernel's (same bits).

    ``row_masks`` ({table weight: uint8 [rows]} from :func:`track_rows`): those tables are
    updated on their marked rows only (the same result as updating every row)."""

    def __init__(self, params: Iterable, lr: float, row_masks: dict[Tensor, Tensor] | None = None,
                 row_grads: dict[Tensor, RowGrad] | None = None,
                 step_rows: dict[Tensor, Tensor] | None = None):
        super().__init__(params, lr=lr)
        self.row_masks = dict(row_masks or {})
        self.row_grads = dict(row_grads or {})
        #: lazy Adam (--emb_optimizer lazy_adam, from attach_step_rows): these tables move on
        #: the rows of the step's lookups only, as deep_components.lazy_adam.LazyAdam defines it
        self.step_rows = dict(step_rows or {})
        self.lazy = bool(self.step_rows)

    def _grad(self, p: Tensor) -> Tensor | None:
        """The parameter's gradient this step: ``.grad``, or its RowGrad's sum."""
        rg = self.row_grads.get(p)
        if rg is not None and rg.ids:
            return rg.acc if p.grad is None else p.grad + rg.acc
        return p.grad

    def extra_grads(self) -> list[Tensor]:
        """The rows of this step's row gradients (what ``.grad`` would hold beyond zeros)."""
        return [rg.touched() for rg in self.row_grads.values() if rg.ids]

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for rg in self.row_grads.values():
            rg.clear()
        for mask in self.step_rows.values():
            mask.zero_()

    def _takes(self) -> bool:
        for group in self.param_groups:
            if (group["amsgrad"] or group["maximize"] or group["weight_decay"] != 0
                    or group.get("foreach") or group.get("fused") or group["capturable"]
                    or group["differentiable"] or isinstance(group["lr"], Tensor)
                    or not group["betas"][0] > 0.5):
                return False
            for p in group["params"]:
                g = self._grad(p)
                if g is None:
                    continue
                if not (kernels.supports(p) and p.dtype == torch.float32 and p.is_contiguous()
                        and not g.is_sparse and g.dtype == torch.float32 and g.is_contiguous()
                        and g.device == p.device):
                    return False
        return True

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not self._takes() or not fast_path()[0]:
            if self.lazy:
                raise RuntimeError("lazy NativeAdam needs the native step (CPU float32 tensors)")
            for p, rg in self.row_grads.items():        # torch's step reads .grad
                if rg.ids:
                    p.grad = self._grad(p).clone()
            return super().step(closure)
        lib = kernels.native_library()
        vsqrt = _check[1]
        for group in self.param_groups:
            for p in group["params"]:
                grad = self._grad(p)
                if grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:                       # as torch.optim.Adam initialises it
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                # a CPU scalar, as torch's Adam reads it (TensorBase's own item: not a device
                # read, so not counted by syncs.host_reads)
                step = torch._C.TensorBase.item(state["step"])
                mask, mode = self.row_masks.get(p), SKIP_UNTOUCHED
                if p in self.step_rows:
                    mask, mode = self.step_rows[p], MARKED_ROWS_ONLY
                _kernel_step(lib, p, grad, state["exp_avg"], state["exp_avg_sq"], mask,
                             _scalars(group, step), vsqrt, mode)
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for p, mask in self.row_masks.items():
            st = self.state.get(p)
            if st and "exp_avg" in st:
                mask.copy_(_nonzero_rows(st["exp_avg"]) | _nonzero_rows(st["exp_avg_sq"]))
