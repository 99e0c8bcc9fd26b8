"""Training and evaluation throughput (requests/s), the split of a training step, peak memory.

    python bench/throughput.py --data_dir data/synthetic/small [--settings two_stage three_stage]
        [--methods lcron bce ...] [--steps 20] [--kernels auto|native|torch] [--device cpu]
        [--precision fp32|bf16|fp16] [--matmul auto|mkl|onednn]
        [--repo /path/to/another/checkout] [--out bench_throughput.md]

Every (setting, method) runs in its own process (so the peak RSS is its own): full training
steps (forward of every tower, loss, backward, every optimiser) on batches of the first
training day after warm-up steps, timed part by part, then, once per setting, the evaluation of
the test day as ``run_test*.py`` scores it (tower scores and every metric).  Printed as one
table; ``--out`` also writes it as Markdown.  ``--repo`` measures another checkout (e.g. a
worktree of the code before a change) with this same script and data; ``--kernels`` is passed
only to checkouts that have the native kernels, ``--matmul`` (the fp32 products' library) only
to checkouts that have deep_components/matmul.py.

Columns: req/s = batch / mean step time; fwd/loss/bwd/opt = mean seconds of each part of a
step (CPU timings; on CUDA the device is synchronised at each boundary); GFLOP/s = analytic
model FLOPs (dense and attention work, x3 for forward + backward) per second; eval req/s =
test-day requests scored and measured per second.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from report import emit_table  # bench/report.py (this folder is on sys.path when run as a script)

HERE = Path(__file__).resolve().parent.parent


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


def registered_methods(repo: str) -> list[str]:
    """The measured checkout's methods, in table order (its ``python -m deep_components.loss``)."""
    r = subprocess.run([sys.executable, "-m", "deep_components.loss"], cwd=repo, capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: {repo}: cannot list its methods ({r.stderr.strip()[-200:]}); "
                         "pass --methods")
    return r.stdout.split()


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(data_dir: str, setting: str, method: str, steps: int, warmup: int, batch: int,
            device_name: str, kernel_mode: str | None, with_eval: bool,
            precision: str = "fp32", matmul_mode: str | None = None) -> dict:
    """One (setting, method): timed training steps and, with_eval, the test day's evaluation."""
    import numpy as np
    import torch

    from deep_components.specs import get_spec
    from deep_components.data import batch_indices, default_split, list_days, load_day, read_id_counts
    from deep_components.data.vocab import build_vocabulary
    try:                                   # older checkouts (--repo): evaluate.py
        from deep_components.scoring import evaluate
    except ImportError:
        from deep_components.evaluate import evaluate
    from deep_components.loss import build_loss
    try:                                   # older checkouts (--repo) keep it in runtime.py
        from deep_components.devices import resolve_device
    except ImportError:
        from deep_components.runtime import resolve_device
    from deep_components.data.batches import batch_to_device
    from deep_components.models import build_models, forward_all
    try:
        from deep_components.training import build_optimizers
    except ImportError:
        from deep_components.train import build_optimizers

    try:                                   # as the entry points do (older checkouts lack it)
        try:
            from deep_components.process import keep_freed_memory
        except ImportError:
            from deep_components.runtime import keep_freed_memory

        keep_freed_memory()
    except ImportError:
        pass
    device = resolve_device(device_name)
    kernel_line = "(no native kernels in this checkout)"
    if kernel_mode is not None:
        from deep_components import kernels

        kernel_line = kernels.select(kernel_mode, device)
    matmul_line = "(torch's default products: no deep_components/matmul.py in this checkout)"
    if matmul_mode is not None:
        from deep_components import matmul

        matmul_line = matmul.select(matmul_mode, device)
    spec = get_spec(setting)
    train_days, test_day = default_split(list_days(data_dir))
    day = load_day(data_dir, train_days[0], spec).in_memory()
    vocab = build_vocabulary([day])                 # compact tables, as training builds them
    day = vocab.apply(day, in_place=True)
    torch.manual_seed(0)
    models = [m.to(device) for m in build_models(spec, read_id_counts(data_dir), vocab=vocab)]
    loss_fn = build_loss(method, spec).to(device)
    opts = build_optimizers(models, loss_fn, 0.01)
    idx_list = batch_indices(day.num_requests, batch, seed=0)
    arrays = day.arrays()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    if precision == "fp32":
        from contextlib import nullcontext

        def autocast():
            return nullcontext()
    else:                                  # the trainer's autocast (checkouts that have one)
        from deep_components.precision import autocast as precision_autocast

        def autocast():
            return precision_autocast(precision, device)

    def step(i: int, parts: list | None):
        t = [time.perf_counter()]
        b = batch_to_device({k: v[idx_list[i % len(idx_list)]] for k, v in arrays.items()}, device)
        sync(); t.append(time.perf_counter())
        with autocast():
            scores = [s.float() for s in forward_all(models, b)]
        sync(); t.append(time.perf_counter())
        out = loss_fn(scores, b["labels"], b["item_mask"])
        sync(); t.append(time.perf_counter())
        for o in opts:
            o.zero_grad(set_to_none=True)
        out["loss"].backward()
        sync(); t.append(time.perf_counter())
        for o in opts:
            o.step()
        sync(); t.append(time.perf_counter())
        if parts is not None:
            parts.append(np.diff(t))
        return b

    for i in range(warmup):
        step(i, None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts: list = []
    hist_rows = []
    for i in range(steps):
        b = step(warmup + i, parts)
        hist_rows.append(float(b["history_mask"].sum(-1).float().mean()))
    p = np.mean(parts, axis=0)
    sec = float(np.sum(p))
    H = float(np.mean(hist_rows))
    flops = 3 * batch * sum(tower_flops(t, spec.num_slots, H) for t in spec.towers)
    res = {"setting": setting, "method": method, "device": str(device), "batch": batch,
           "precision": precision,
           "steps": steps, "seconds_per_step": sec, "requests_per_s": batch / sec,
           "batch_s": p[0], "forward_s": p[1], "loss_s": p[2], "backward_s": p[3], "optimiser_s": p[4],
           "model_gflops_per_s": flops / sec / 1e9, "threads": torch.get_num_threads(),
           "kernels": kernel_line, "matmul": matmul_line}
    if with_eval:
        test = vocab.apply(load_day(data_dir, test_day, spec).in_memory(), in_place=True)
        for m in models:
            m.eval()
        evaluate(models, test, spec, device)       # warm-up
        t0 = time.perf_counter()
        evaluate(models, test, spec, device)
        sync()
        res["eval_requests_per_s"] = test.num_requests / (time.perf_counter() - t0)
    res["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return res


def run_child(a: argparse.Namespace, setting: str, method: str, with_eval: bool) -> dict:
    repo = Path(a.repo).resolve()
    has_kernels = (repo / "deep_components" / "kernels").is_dir()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", setting, method,
           "--data_dir", str(Path(a.data_dir).resolve()), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--batch_size", str(a.batch_size), "--device", a.device]
    if a.precision != "fp32":
        cmd += ["--precision", a.precision]
    if has_kernels:
        cmd += ["--kernels", a.kernels]
    if (repo / "deep_components" / "matmul.py").is_file():
        cmd += ["--matmul", a.matmul]
    if with_eval:
        cmd.append("--_eval")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    if r.returncode != 0:
        raise SystemExit(f"{setting} {method}: the measurement failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(rows: list[dict], cuda: bool) -> list[str]:
    head = ["setting", "method", "req/s", "s/step", "fwd", "loss", "bwd", "opt", "GFLOP/s",
            "peak RSS MB", "eval req/s"] + (["peak CUDA MB"] if cuda else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["setting"], r["method"], f"{r['requests_per_s']:,.0f}", f"{r['seconds_per_step']:.3f}",
                 f"{r['forward_s']:.3f}", f"{r['loss_s']:.3f}", f"{r['backward_s']:.3f}",
                 f"{r['optimiser_s']:.3f}", f"{r['model_gflops_per_s']:.1f}", f"{r['peak_rss_mb']:,.0f}",
                 f"{r['eval_requests_per_s']:,.0f}" if "eval_requests_per_s" in r else ""]
        if cuda:
            cells.append(f"{r['peak_cuda_mb']:,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default="data/synthetic/small")
    ap.add_argument("--settings", nargs="+", default=["two_stage", "three_stage"])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="default: every registered method")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=1024)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--kernels", default="auto", choices=["auto", "native", "torch"])
    ap.add_argument("--matmul", default="auto", choices=["auto", "mkl", "onednn"],
                    help="the towers' fp32 products: MKL, oneDNN, or auto (the run's default)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="the towers under autocast (the trainer's --precision)")
    ap.add_argument("--repo", default=str(HERE), help="checkout whose code is measured")
    ap.add_argument("--out", default=None, help="also write the table here (Markdown)")
    ap.add_argument("--_child", nargs=2, metavar=("SETTING", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--_eval", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        r = measure(a.data_dir, *a._child, a.steps, a.warmup, a.batch_size, a.device,
                    a.kernels if "--kernels" in sys.argv else None, a._eval, a.precision,
                    a.matmul if "--matmul" in sys.argv else None)
        print(json.dumps(r, default=float))
        return 0
    if not Path(a.data_dir).is_dir():
        raise SystemExit(f"error: {a.data_dir}: no such data folder (generate it: python -m "
                         "deep_components.data.synthetic --preset small --out data/synthetic/small)")
    rows = []
    for setting in a.settings:
        for i, method in enumerate(a.methods or registered_methods(a.repo)):
            r = run_child(a, setting, method, with_eval=i == 0)
            rows.append(r)
            if len(rows) == 1:
                import torch

                print(f"repo {Path(a.repo).resolve()}, device {r['device']}, {a.precision}, "
                      f"torch {torch.__version__}, "
                      f"{r['threads']} threads, batch {a.batch_size}, {a.steps} steps after "
                      f"{a.warmup} warm-up\nkernels: {r['kernels']}\nmatmul: {r['matmul']}",
                      flush=True)
            print(f"{setting:<12} {method:<14} {r['requests_per_s']:>7,.0f} req/s  step "
                  f"{r['seconds_per_step']:.3f} s = fwd {r['forward_s']:.3f} + loss {r['loss_s']:.3f} + "
                  f"bwd {r['backward_s']:.3f} + opt {r['optimiser_s']:.3f} (+ batch {r['batch_s']:.3f})  "
                  f"peak RSS {r['peak_rss_mb']:,.0f} MB"
                  + (f"  eval {r['eval_requests_per_s']:,.0f} req/s" if "eval_requests_per_s" in r else ""),
                  flush=True)
    lines = table(rows, any("peak_cuda_mb" in r for r in rows))
    emit_table(lines, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
