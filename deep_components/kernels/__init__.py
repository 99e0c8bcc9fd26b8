"""Native CPU kernels, compiled on first use and loaded with ctypes.

``native.cpp`` holds DIN's fused attention scores (forward and backward of ``relu(q + h) · w``
without the [B, N, H, D] hidden layer), the gradient of an embedding lookup (the same additions
in the same order as torch's, without its sort; dense, or added into a step's running row
buffer), Adam's step in one pass (deep_components.native_adam: torch's bits) and Kendall's τ-b
per request (the same integer counts as deep_components.metrics, without [R, N, N] temporaries).  It is compiled once per machine with
the system C++ compiler (``$CXX``, else ``c++``/``g++``) at ``-O3 -march=native`` into a cache
folder (``$LCRON_KERNEL_DIR``, else ``~/.cache/lcron/kernels``), keyed by the source, the
compiler, the flags and the CPU, with a SHA-256 of the library beside it (``.sha256``); a cached
library whose bytes no longer match (truncated, corrupt) is rebuilt, never loaded.  Then it
loads in well under a second.  No compiler, a failed
build or a folder that cannot be written: the towers use their pure-PyTorch path, which computes
values equal to rounding (bit-identical embedding gradients and Kendall τ; DIN's attention to
float rounding, tests/test_kernels.py), and the run's log says which path ran.

Selection (``--kernels`` or :func:`set_mode`): ``auto`` (native on the CPU when it builds,
PyTorch otherwise), ``native`` (native or an error), ``torch`` (always PyTorch).  CUDA tensors
always take the PyTorch path.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

import torch

from ..atomic import staged
from ..errors import UsageError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.cpp")
ABI = 4
MODES = ("auto", "native", "torch")
BASE_FLAGS = ["-O3", "-std=c++17", "-fopenmp-simd", "-shared", "-fPIC", "-pthread"]

_mode = "auto"
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = None          # why the native kernel is (not) in use, once tried
_selected: str | None = None        # what the current run uses (select)


class KernelError(UsageError):
    """``--kernels native`` was asked for and the kernel cannot be built or loaded."""


def set_mode(mode: str) -> None:
    global _mode
    if mode not in MODES:
        raise ValueError(f"--kernels must be one of {MODES}, got {mode!r}")
    _mode = mode


def get_mode() -> str:
    return _mode


def cache_dir() -> Path:
    env = os.environ.get("LCRON_KERNEL_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lcron" / "kernels"


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and, on Linux, the CPU's model and flags."""
    sig = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    sig.append(line.strip())
                if len(sig) >= 5:
                    break
    except OSError:
        pass
    return "\n".join(sig)


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(lib: Path) -> bool:
    """The cached library exists and its bytes are those its build recorded."""
    try:
        return lib.is_file() and _digest_file(lib).read_text().strip() == _sha256(lib)
    except OSError:
        return False


def _build(cxx: str) -> tuple[Path, str]:
    """Compile (or find compiled and intact) the kernel; returns (library path, compiler
    version line)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()
    version_line = version[0] if version else cxx
    src = SOURCE.read_bytes()
    errors = []
    for arch in (["-march=native"], []):          # some compilers lack -march=native
        flags = BASE_FLAGS + arch
        key = hashlib.sha256(b"\0".join([src, "\n".join(version).encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode(), str(ABI).encode()])).hexdigest()[:16]
        out_dir = cache_dir()
        lib = out_dir / f"lcron-native-{key}.so"
        if _intact(lib):
            return lib, version_line
        if lib.exists():
            log.warning("cached kernel library %s does not match its recorded digest (truncated "
                        "or corrupt): rebuilding it", lib)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:                     # atomic: concurrent builders (torchrun ranks) agree on the file
            with staged(lib) as tmp:
                r = subprocess.run([cxx, *flags, str(SOURCE), "-o", str(tmp)], capture_output=True,
                                   text=True, timeout=300)
                if r.returncode != 0:
                    raise _CompileFailed((r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"])
                digest = _sha256(tmp)
            with staged(_digest_file(lib)) as tmp:
                tmp.write_text(digest)
            return lib, version_line
        except _CompileFailed as e:
            errors.append(e.args[0])
    raise OSError(f"{cxx} could not compile {SOURCE.name}: {errors[-1][0]}")


class _CompileFailed(Exception):
    """The compiler's last error line (the build tries the next flag set)."""


def _load() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise OSError("no C++ compiler found ($CXX, c++, g++, clang++)")
    path, version = _build(cxx)
    lib = ctypes.CDLL(str(path))
    if lib.lcron_kernel_abi() != ABI:
        raise OSError(f"{path}: kernel ABI {lib.lcron_kernel_abi()}, expected {ABI}")
    i64, p, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for dt in ("f32", "f64"):
        getattr(lib, f"pair_attention_forward_{dt}").argtypes = [p] * 5 + [i64] * 4 + [c_int]
        getattr(lib, f"pair_attention_backward_{dt}").argtypes = [p] * 9 + [i64] * 4 + [c_int]
        getattr(lib, f"embedding_backward_{dt}").argtypes = [p] * 3 + [i64] * 4 + [p]
    lib.kendall_tau_rows.argtypes = [p] * 4 + [i64] * 2 + [c_int]
    f32 = ctypes.c_float
    lib.adam_step_f32.argtypes = [p] * 5 + [i64] * 2 + [c_int] + [f32] * 6 + [p, p, c_int]
    lib.embedding_backward_add_f32.argtypes = [p] * 5 + [i64] * 4 + [c_int, c_int]
    global _status
    _status = f"native C++ ({version}; {path})"
    return lib


def native_library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when the mode or the machine says PyTorch."""
    global _lib, _status
    if _mode == "torch":
        return None
    if _lib is None and _status is None:
        with _lock:
            if _lib is None and _status is None:
                try:
                    _lib = _load()
                except (OSError, subprocess.SubprocessError) as e:
                    _status = f"PyTorch fallback ({e})"
    if _lib is None and _mode == "native":
        raise KernelError(f"--kernels native: {_status}")
    return _lib


def _short(status: str) -> str:
    return status.split("; ")[0] + ")" if status.startswith("native") else status


def describe() -> str:
    """Which path DIN's attention, the embedding gradients and Kendall τ take on the CPU, and
    why."""
    if _mode == "torch":
        return "PyTorch (--kernels torch)"
    native_library()
    return _status or "PyTorch"


def select(mode: str, device: torch.device) -> str:
    """Apply ``--kernels`` for a run on ``device``; returns the line that says what runs (and
    raises KernelError for ``native`` on a machine that cannot build the kernels)."""
    global _selected
    set_mode(mode)
    _selected = (f"PyTorch ({device.type}: the native kernels are CPU only)"
                 if device.type != "cpu" else describe())
    log.info("kernels: %s", _selected)
    return _selected


def selected(short: bool = False) -> str | None:
    """The line of the last :func:`select`, or None."""
    return None if _selected is None else (_short(_selected) if short else _selected)


def supports(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def pair_attention_forward(lib: ctypes.CDLL, q: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                           lengths: torch.Tensor) -> torch.Tensor:
    """q [B, N, D], h [B, H, D], w [D], lengths [B] -> a [B, N, H] (0 on padded rows)."""
    B, N, D = q.shape
    H = h.shape[1]
    q, h, w = q.contiguous(), h.contiguous(), w.contiguous()
    lengths = lengths.to(torch.int64).contiguous()
    out = q.new_empty(B, N, H)
    fn = lib.pair_attention_forward_f32 if q.dtype == torch.float32 else lib.pair_attention_forward_f64
    fn(_ptr(q), _ptr(h), _ptr(w), _ptr(lengths), _ptr(out), B, N, H, D, torch.get_num_threads())
    return out


def pair_attention_backward(lib: ctypes.CDLL, q: torch.Tensor, h: torch.Tensor, w: torch.Tensor,
                            lengths: torch.Tensor, grad: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (gq [B, N, D], gh [B, H, D], gw [D]) of sum(grad * a) over the valid rows."""
    B, N, D = q.shape
    H = h.shape[1]
    q, h, w, grad = q.contiguous(), h.contiguous(), w.contiguous(), grad.contiguous()
    lengths = lengths.to(torch.int64).contiguous()
    gq, gh, gw = torch.empty_like(q), torch.empty_like(h), torch.empty_like(w)
    gw_rows = q.new_empty(B, D)
    fn = lib.pair_attention_backward_f32 if q.dtype == torch.float32 else lib.pair_attention_backward_f64
    fn(_ptr(q), _ptr(h), _ptr(w), _ptr(lengths), _ptr(grad), _ptr(gq), _ptr(gh), _ptr(gw),
       _ptr(gw_rows), B, N, H, D, torch.get_num_threads())
    return gq, gh, gw


def _lookup_args(grad: torch.Tensor, ids: torch.Tensor, padding_idx: int | None,
                 mark: torch.Tensor | None) -> tuple:
    """(grad [n, dim] contiguous, ids [n] int64 contiguous, padding row or -1, mark pointer or
    None): what the embedding-gradient kernels take of one lookup."""
    grad = grad.reshape(-1, grad.shape[-1]).contiguous()
    ids = ids.reshape(-1).to(torch.int64).contiguous()
    return grad, ids, -1 if padding_idx is None else padding_idx, None if mark is None else _ptr(mark)


def embedding_backward(lib: ctypes.CDLL, grad: torch.Tensor, ids: torch.Tensor, rows: int,
                       padding_idx: int | None, mark: torch.Tensor | None = None) -> torch.Tensor:
    """grad [..., dim], ids [...] -> the dense table gradient [rows, dim] (padding row 0);
    ``mark`` (uint8 [rows]) gets 1 on the rows the gradient reaches."""
    grad, ids, pad, mark_ptr = _lookup_args(grad, ids, padding_idx, mark)
    out = grad.new_empty(rows, grad.shape[1])
    fn = lib.embedding_backward_f32 if grad.dtype == torch.float32 else lib.embedding_backward_f64
    fn(_ptr(ids), _ptr(grad), _ptr(out), ids.numel(), rows, grad.shape[1], pad, mark_ptr)
    return out


def embedding_backward_add(lib: ctypes.CDLL, grad: torch.Tensor, ids: torch.Tensor,
                           acc: torch.Tensor, slot: torch.Tensor, padding_idx: int | None,
                           first: bool, mark: torch.Tensor | None = None) -> None:
    """Add the table gradient of one lookup (grad [..., dim] float32, ids [...]) into ``acc``
    [rows, dim], which holds the step's earlier lookups' sum, as torch adds whole gradients;
    ``slot``: int32 [rows] of -1 (scratch, left as it was); ``mark`` as embedding_backward."""
    grad, ids, pad, mark_ptr = _lookup_args(grad, ids, padding_idx, mark)
    lib.embedding_backward_add_f32(_ptr(ids), _ptr(grad), _ptr(acc), _ptr(slot), mark_ptr,
                                   ids.numel(), acc.shape[0], grad.shape[1], pad, int(first),
                                   torch.get_num_threads())


def kendall_tau_rows(lib: ctypes.CDLL, s, lab, m):
    """Kendall's τ-b per row of float64 scores and labels [R, N] over valid slots (bool mask)."""
    import numpy as np

    s = np.ascontiguousarray(s, dtype=np.float64)
    lab = np.ascontiguousarray(lab, dtype=np.float64)
    m = np.ascontiguousarray(m, dtype=np.bool_)
    out = np.empty(s.shape[0])
    lib.kendall_tau_rows(s.ctypes.data, lab.ctypes.data, m.ctypes.data, out.ctypes.data,
                         s.shape[0], s.shape[1], torch.get_num_threads())
    return out
