"""Multi-process training under torchrun (DistributedDataParallel), read from its environment.

``torchrun --nproc_per_node=N deep_components/run_train2.py ...`` starts N processes with
RANK / WORLD_SIZE / LOCAL_RANK set; each joins a process group (``gloo`` on CPU, ``nccl`` on
CUDA).  Batch semantics: ``--batch_size`` is the **global** batch; every global batch of a
day's seeded shuffle is cut into W contiguous slices of batch_size / W requests, rank r taking
slice r.  Gradients are averaged over ranks, so a step equals the single-process step on the
whole global batch for every loss that is a mean over requests.  Rank 0 alone writes logs,
checkpoints and run folders.  Without torchrun everything here is a no-op (world size 1).
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: "gloo" or "nccl" under torchrun, "" in one process
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous slice of a global batch of indices."""
        if not self.enabled:
            return idx
        per = len(idx) // self.world
        return idx[self.rank * per:(self.rank + 1) * per]

    def read_flag_and_mean(self, flag: torch.Tensor, values: torch.Tensor | None = None
                           ) -> tuple[bool, list[float]]:
        """(a 0-d bool tensor AND-ed over ranks, float64 ``values`` averaged over ranks), read
        to the host in one transfer."""
        f = flag.to(torch.float64).reshape(1)
        if self.enabled:
            dist.all_reduce(f, op=dist.ReduceOp.MIN)
        if values is None:
            return bool(f.item() > 0), []
        host = torch.cat([f, self.mean_tensor(values)]).tolist()
        return host[0] > 0, host[1:]

    def mean_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A float tensor averaged over ranks (same shape on every rank; one all-reduce)."""
        if not self.enabled:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def average_grads(self, params) -> None:
        """All-reduce (mean) the gradients of parameters that DDP does not manage."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_objects(self, obj):
        """List of every rank's ``obj`` on every rank."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


_CONTEXT: DistContext | None = None


def check_timeout(minutes: float) -> None:
    """``--dist_timeout``: a positive, finite number of minutes (UsageError otherwise)."""
    import math

    from .errors import UsageError

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"--dist_timeout must be a positive number of minutes, got {minutes}")


def init_distributed(device_name: str, timeout_minutes: float = 120.0) -> tuple[DistContext, str]:
    """Join the torchrun process group if there is one; returns (context, device name).

    Under torchrun with CUDA, each process uses ``cuda:LOCAL_RANK``; a node with fewer GPUs
    than processes is one UsageError before any work.  ``timeout_minutes`` is how long a
    collective waits (``--dist_timeout``): ranks 1... wait in a barrier while rank 0 converts the
    days, which takes minutes at RecFlow's real size (NCCL's own default is 10)."""
    import datetime

    from .errors import UsageError

    global _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT, device_name
    check_timeout(timeout_minutes)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name.startswith("auto") and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device_name}: CUDA is not available on this machine "
                             "(use --device cpu under torchrun for the gloo backend)")
        n = torch.cuda.device_count()
        if local >= n:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", "?")
            raise UsageError(f"torchrun started {per_node} processes on this node but it has {n} "
                             f"GPU(s) (local rank {local} has none); use --nproc_per_node={n} or "
                             "fewer")
        device_name = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    _CONTEXT = DistContext(rank=rank, world=world, local_rank=local, backend=str(dist.get_backend()))
    return _CONTEXT, device_name


def context() -> DistContext:
    return _CONTEXT or DistContext()


def shutdown() -> None:
    """Leave the process group while Python still runs normally.

    DDP wrappers caught in reference cycles keep the gloo group (and its worker threads) alive
    until the interpreter's final collection; a worker thread that then drops the last
    reference to a tensor needs the GIL, which a finalizing interpreter no longer hands out, and
    the process aborts ("terminate called without an active exception"), failing the whole
    torchrun job after every file was written.  Collecting first frees those wrappers now, so
    destroying the group joins its threads before the interpreter shuts down."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
