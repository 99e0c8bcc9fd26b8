"""Serving benchmark: a trained cascade over its whole catalogue (deep_components.serve).

    python bench/serving.py --run_dir RUN [RUN ...] [--indexes exact ivf hnsw] [--batches 1 256]
        [--requests 512] [--keep 500 10] [--device cpu] [--out bench_serving.md]

Per run and index: the time to load the towers and build the catalogue (from the day caches;
cached after the first index, so the second reads it), the item vectors and the index; then the run's test-day requests served in batches of each size
(``recommend``: user vectors, index search, every later tower on what the stage before kept):
requests/s and the p50 / p99 latency of one call (one batch), after one warm-up call.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deep_components.data import load_day  # noqa: E402
from deep_components.serve import Cascade, build_index, recall_vs_exact  # noqa: E402
from report import emit_table  # noqa: E402  (bench/report.py)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run_dir", nargs="+", required=True)
    ap.add_argument("--indexes", nargs="+", default=["exact", "ivf", "hnsw"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    ap.add_argument("--requests", type=int, default=512, help="requests served per batch size")
    ap.add_argument("--keep", nargs="+", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    lines = ["| data | setting | index | videos | catalogue + vectors + index s | recall@K1 vs exact | "
             "batch | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    for run in a.run_dir:
        for kind in a.indexes:
            t0 = time.perf_counter()
            c = Cascade.from_run(run, device=a.device, index=kind)
            setup = time.perf_counter() - t0
            keep = a.keep or ([500, 10] if c.spec.num_stages == 2 else [500, 100, 10])
            day = load_day(c.data_dir, c.saved["test_day"], c.spec)
            day = c.vocab.apply(day) if c.vocab is not None else day
            data = Path(c.data_dir).name
            recall = "1 (exact)"
            if kind != "exact":                  # the approximate index against the exact one
                n = min(a.requests, day.num_requests)
                u = c.user_vectors(day.context[:n], day.history[:n], day.history_mask[:n])
                _, approx = c.index.search(u, keep[0])
                recall = f"{recall_vs_exact(build_index(c.item_vectors, 'exact'), u, approx).mean():.4f}"
            for bs in a.batches:
                n = min(a.requests, day.num_requests)
                calls = []
                c.recommend(day.context[:bs], day.history[:bs], day.history_mask[:bs], keep)  # warm-up
                t_all = time.perf_counter()
                for s in range(0, n - bs + 1, bs):
                    t = time.perf_counter()
                    c.recommend(day.context[s:s + bs], day.history[s:s + bs], day.history_mask[s:s + bs], keep)
                    calls.append(time.perf_counter() - t)
                total = time.perf_counter() - t_all
                served = len(calls) * bs
                p50, p99 = (np.percentile(calls, q) * 1e3 for q in (50, 99))
                line = (f"| {data} | {c.spec.name} | {kind} | {len(c.catalogue):,} | {setup:.1f} "
                        f"(catalogue {c.catalogue_seconds:.1f}, vectors {c.vector_seconds:.1f}, index "
                        f"{c.index_seconds:.1f}) | {recall} | {bs} | "
                        f"{served / total:,.0f} | {p50:.1f} | {p99:.1f} |")
                print(line, flush=True)
                lines.append(line)
    emit_table(lines, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
