"""Training throughput of the cascade trainer (requests/s), peak memory and model-FLOP rate.

    python bench/throughput.py --data_dir data/synthetic/small --settings two_stage three_stage \
        --methods lcron bce --steps 20 [--device cpu] [--peak_tflops 1.0]

Measures full training steps (forward of every tower, loss, backward, every optimiser) on real
batches of the first training day, after warm-up steps.  Reports requests/s, seconds/step, the
process's peak RSS (and peak CUDA memory on a GPU), the achieved model FLOP rate (an analytic
count of the dense and attention work, x3 for forward + backward) and, given --peak_tflops,
the utilisation (achieved / peak).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_components.cascade import get_spec  # noqa: E402
from deep_components.data import batch_indices, default_split, list_days, load_day, read_id_counts  # noqa: E402
from deep_components.loss import build_loss  # noqa: E402
from deep_components.runtime import resolve_device  # noqa: E402
from deep_components.data.vocab import build_vocabulary  # noqa: E402
from deep_components.train import batch_to_device, build_models, build_optimizers, forward_all  # noqa: E402


def tower_flops(tower: str, N: int, H: float) -> float:
    """Forward FLOPs per request of one tower (2 x multiply-adds), H = mean valid history rows."""
    lin = lambda i, o: 2 * i * o
    if tower == "dssm":
        return lin(104, 128) + lin(128, 64) + lin(64, 32) + N * (lin(64, 128) + lin(128, 64) + lin(64, 32) + 64)
    if tower == "mlp":
        return N * (lin(168, 128) + lin(128, 64) + lin(64, 32) + lin(32, 1))
    if tower == "din":
        attention = H * lin(40, 80) + N * lin(40, 80) + N * H * (80 + 80 + 2 * 80) + N * H * 2 * 40
        return attention + N * (lin(168, 128) + lin(128, 128) + lin(128, 32) + lin(32, 1))
    raise ValueError(tower)


def bench(data_dir: str, setting: str, method: str, steps: int, warmup: int, batch: int,
          device: torch.device) -> dict:
    spec = get_spec(setting)
    days = list_days(data_dir)
    train_days, _ = default_split(days)
    day = load_day(data_dir, train_days[0], spec).in_memory()
    vocab = build_vocabulary([day])                 # compact tables, as training builds them
    day = vocab.apply(day, in_place=True)
    torch.manual_seed(0)
    models = [m.to(device) for m in build_models(spec, read_id_counts(data_dir), vocab=vocab)]
    loss_fn = build_loss(method, spec).to(device)
    opts = build_optimizers(models, loss_fn, 0.01)
    idx_list = batch_indices(day.num_requests, batch, seed=0)
    arrays = day.arrays()

    def step(i):
        idx = idx_list[i % len(idx_list)]
        b = batch_to_device({k: v[idx] for k, v in arrays.items()}, device)
        out = loss_fn(forward_all(models, b), b["labels"], b["item_mask"])
        for o in opts:
            o.zero_grad(set_to_none=True)
        out["loss"].backward()
        for o in opts:
            o.step()
        return b

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    hist_rows = []
    for i in range(steps):
        b = step(warmup + i)
        hist_rows.append(float(b["history_mask"].sum(-1).float().mean()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    H = float(np.mean(hist_rows))
    flops = 3 * batch * steps * sum(tower_flops(t, spec.num_slots, H) for t in spec.towers)
    res = {"setting": setting, "method": method, "device": str(device), "batch": batch,
           "steps": steps, "seconds_per_step": sec / steps, "requests_per_s": batch * steps / sec,
           "model_gflops_per_s": flops / sec / 1e9, "mean_valid_history": H,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="data/synthetic/small")
    ap.add_argument("--settings", nargs="+", default=["two_stage", "three_stage"])
    ap.add_argument("--methods", nargs="+", default=["lcron"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--peak_tflops", type=float, default=None,
                    help="the hardware's peak FP32 TFLOP/s, to print utilisation")
    a = ap.parse_args()
    device = resolve_device(a.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch_size}")
    print(f"{'setting':<12} {'method':<14} {'req/s':>9} {'s/step':>8} {'GFLOP/s':>9} {'peak RSS MB':>12}"
          + ("  util" if a.peak_tflops else "") + ("  peak CUDA MB" if device.type == "cuda" else ""))
    for setting in a.settings:
        for method in a.methods:
            r = bench(a.data_dir, setting, method, a.steps, a.warmup, a.batch_size, device)
            line = (f"{setting:<12} {method:<14} {r['requests_per_s']:>9,.0f} {r['seconds_per_step']:>8.3f} "
                    f"{r['model_gflops_per_s']:>9.1f} {r['peak_rss_mb']:>12,.0f}")
            if a.peak_tflops:
                line += f"  {r['model_gflops_per_s'] / (a.peak_tflops * 1e3):5.1%}"
            if device.type == "cuda":
                line += f"  {r['peak_cuda_mb']:>12,.0f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
