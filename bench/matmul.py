"""GFLOP/s of the towers' fp32 products on this CPU, MKL (torch's default) against oneDNN.

    python bench/matmul.py [--threads 2] [--repeats 12] [--out bench_matmul.md]

For each product shape of a training step at batch 1024 (M = 1024 x 50 candidate rows, or 1024
request rows), the forward ``x @ W.T + b`` and the input gradient ``g @ W`` as ``addmm``/``mm``
(MKL) and as oneDNN's inner product (``torch.ops.mkldnn._linear_pointwise``, what
``--matmul onednn`` runs), and the weight gradient ``g.T @ x``, which both backends compute with
``mm``.  "same bits" says whether the two libraries' results are bit-identical on random inputs
(otherwise they agree to float32 rounding).  The mean of ``--repeats`` calls after two warm-up
calls; the CPU's vendor and torch's thread count are printed first.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from report import emit_table  # bench/report.py (this folder is on sys.path when run as a script)

#: (rows, in, out) of the towers' Linear layers in a step of 1024 requests x 50 candidates
SHAPES = [(51200, 104, 128), (51200, 168, 128), (51200, 128, 128), (51200, 128, 64),
          (51200, 64, 128), (51200, 64, 32), (51200, 40, 80), (51200, 32, 128), (51200, 32, 1),
          (1024, 104, 128), (1024, 64, 128)]


def seconds(fn, repeats: int) -> float:
    fn()
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--out", default=None, help="also write the table here (Markdown)")
    a = ap.parse_args()
    import torch

    from deep_components import matmul

    if not matmul.onednn_available():
        raise SystemExit("error: this torch build has no oneDNN (mkldnn): nothing to compare")
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"CPU vendor {matmul.cpu_vendor() or 'unknown'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, GFLOP/s (2 x multiply-adds per second)", flush=True)
    head = ["rows × in → out", "fwd MKL", "fwd oneDNN", "grad-in MKL", "grad-in oneDNN",
            "grad-w (mm)", "same bits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    g0 = torch.Generator().manual_seed(0)
    for M, K, N in SHAPES:
        x = torch.randn(M, K, generator=g0)
        w = torch.randn(N, K, generator=g0) * 0.1
        b = torch.randn(N, generator=g0)
        g = torch.randn(M, N, generator=g0)
        wt = w.t().contiguous()
        gflop = 2 * M * K * N / 1e9
        fwd_mkl = seconds(lambda: torch.addmm(b, x, w.t()), a.repeats)
        fwd_dnn = seconds(lambda: matmul._pointwise(x, w, b), a.repeats)
        gin_mkl = seconds(lambda: g.mm(w), a.repeats)
        gin_dnn = seconds(lambda: matmul._pointwise(g, wt, None), a.repeats)
        gw = seconds(lambda: g.t().mm(x), a.repeats)
        same = (torch.equal(torch.addmm(b, x, w.t()), matmul._pointwise(x, w, b))
                and torch.equal(g.mm(w), matmul._pointwise(g, wt, None)))
        lines.append(f"| {M:,} × {K} → {N} | {gflop / fwd_mkl:.0f} | {gflop / fwd_dnn:.0f} | "
                     f"{gflop / gin_mkl:.0f} | {gflop / gin_dnn:.0f} | {gflop / gw:.0f} | "
                     f"{'yes' if same else 'no'} |")
    emit_table(lines, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
