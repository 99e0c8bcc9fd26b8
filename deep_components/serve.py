"""Serve a trained cascade over the whole catalogue, and measure what survives each stage.

    python -m deep_components.serve --run_dir RUN [RUN ...] [--data_dir D] [--day DATE]
        [--allow_train_day] [--keep 500 100 10] [--index exact|ivf|hnsw] [--device auto]
        [--batch_size 256] [--max_requests N]

For each request: the retrieval tower (DSSM) scores the whole catalogue (deep_components.data.
catalogue) through a faiss inner-product index of its item vectors and keeps its top K1; each
later tower rescores only what the stage before kept and keeps its top K_{t+1}; the last keep is
the recommendation.  ``--index exact`` is faiss's flat inner-product index (the same top-K as
scoring every video with the tower); ``ivf`` (inverted lists) and ``hnsw`` (a graph) are
approximate, and their recall@K1 against the exact index is reported.  HNSW is built for metric
distances and does poorly on inner products (recall@500 0.34–0.55 measured on medium and
recflow-scale, against 0.93–0.97 for ivf).  On a CUDA device, with faiss-gpu installed, the
exact index lives on the GPU (which searches at most 2048 neighbours: a larger first keep is
refused up front); otherwise it runs on the CPU and a warning says why.  Where it ran is
recorded (``index_device``).

Full-catalogue evaluation of a day: per request with positives (the first group of the spec:
``rank_pos`` two-stage, ``rerank_pos`` three-stage), the share of its positive videos kept by
each stage and the share in the final top ``keep[-1]``, averaged over those requests.  Written to
the run folder (its catalogue metrics, which say the day, keep, index and data folder, and whether
that is the run's own data by content); several runs print one table of mean ± std per setting,
day, keep, index and data folder, a row per method and tag.  Each run folder is locked while it
is served, so a run that another process trains or evaluates is refused.

Library:  ``cascade = Cascade.from_run(run_dir)`` (``device="auto"``); ``cascade.recommend(context, history,
history_mask, keep=(500, 10))`` -> per stage, catalogue rows [B, K_t]; ``cascade.video_ids(rows)``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .spec import CascadeSpec
from .data.catalogue import Catalogue, load_catalogue
from .data.errors import DataError
from .data.vocab import LOCATIONS, Vocabulary
from .run_folder import RunFolder, TrainedRun, check_day, iter_unique
from .devices import resolve_device
from .errors import UsageError, report_error

INDEXES = ("exact", "ivf", "hnsw")
#: HNSW graph degree and search breadth (faiss's M and efSearch)
HNSW_M, HNSW_EF_SEARCH = 32, 256
#: IVF: about 4 sqrt(V) lists (at least 39 training vectors each, as faiss's k-means wants), an
#: eighth of them probed (measured recall@500 against exact: 0.93 on medium, 0.97 on
#: recflow-scale; probing a quarter: 0.997 / 0.9997)
IVF_LISTS_PER_SQRT, IVF_PROBE_FRACTION = 4, 8


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UsageError("serving needs faiss: pip install faiss-cpu (or faiss-gpu on a CUDA "
                         "host)") from None
    return faiss


def build_index(vectors: np.ndarray, kind: str = "exact", device: torch.device | None = None):
    """A faiss inner-product index over float32 vectors [V, d]."""
    faiss = _faiss()
    if kind not in INDEXES:
        raise UsageError(f"--index must be one of {INDEXES}, got {kind!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    d = vectors.shape[1]
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        V = vectors.shape[0]
        nlist = max(1, min(int(IVF_LISTS_PER_SQRT * np.sqrt(V)), V // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = max(1, -(-nlist // IVF_PROBE_FRACTION))
    else:
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    if index_device(kind, device)[0] == "cuda":
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    index.add(vectors)
    return index


#: the largest k a faiss GPU index searches (its k-selection limit)
GPU_MAX_K = 2048


def index_device(kind: str, device: torch.device | None) -> tuple[str, str | None]:
    """(where the faiss index of ``kind`` runs for towers on ``device``, why not on the GPU when
    the towers are there): only the exact index moves to the GPU, and only with faiss-gpu."""
    if device is None or device.type != "cuda":
        return "cpu", None
    if kind != "exact":
        return "cpu", f"the {kind} index runs on the CPU (only the exact index moves to the GPU)"
    if not hasattr(_faiss(), "StandardGpuResources"):
        return "cpu", ("faiss-gpu is not installed (the pinned faiss-cpu is): the index runs on "
                       "the CPU; see the README's serving section to install faiss-gpu")
    return "cuda", None


def check_index_k(kind: str, device: torch.device | None, k: int) -> None:
    """A GPU index cannot search more than GPU_MAX_K neighbours: refuse such a --keep up front."""
    if index_device(kind, device)[0] == "cuda" and k > GPU_MAX_K:
        raise UsageError(f"--keep {k}: a faiss GPU index searches at most {GPU_MAX_K} neighbours; "
                         f"keep at most {GPU_MAX_K} from the index, or serve with --device cpu")


def recall_vs_exact(exact, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per query [B, d], the share of the exact index's top K that ``rows`` [B, K] holds."""
    k = rows.shape[1]
    _, ex = exact.search(queries, k)
    return np.array([len(set(x) & set(y)) / k for x, y in zip(ex, rows)])


def default_keep(num_stages: int) -> list[int]:
    """500 from the index, 10 at the end, and 100, 50, 25, ... for the stages between."""
    if num_stages == 1:
        return [10]
    return [500] + [max(11, 100 >> i) for i in range(num_stages - 2)] + [10]


def check_keep(keep: Sequence[int], spec: CascadeSpec, catalogue_size: int) -> tuple[int, ...]:
    keep = tuple(int(k) for k in keep)
    if len(keep) != spec.num_stages:
        raise UsageError(f"--keep needs one value per stage of {spec.name} ({spec.num_stages}: "
                         f"{', '.join(spec.stage_names)}), got {len(keep)}")
    if any(k < 1 for k in keep) or any(b >= a for a, b in zip(keep, keep[1:])):
        raise UsageError(f"--keep must be positive and strictly decreasing, got {list(keep)}")
    if keep[0] > catalogue_size:
        raise UsageError(f"--keep {keep[0]} is more than the catalogue's {catalogue_size} videos")
    return keep


def _tower_items(catalogue: Catalogue, vocab: Vocabulary | None) -> np.ndarray:
    """The catalogue's item rows as the towers read them (compact vocabulary rows)."""
    items = np.array(catalogue.items, dtype=np.int64, copy=True)
    if vocab is not None:
        for field, places in LOCATIONS.items():
            for name, col in places:
                if name == "items":
                    items[:, col] = vocab.map_ids(field, items[:, col])[0]
    return items


class Cascade:
    """A trained cascade over a catalogue: towers in stage order, the catalogue, its index."""

    def __init__(self, models, spec: CascadeSpec, catalogue: Catalogue, vocab: Vocabulary | None,
                 device: torch.device, index: str = "exact", batch_size: int = 65_536):
        self.models = [m.eval() for m in models]
        self.spec, self.catalogue, self.vocab, self.device = spec, catalogue, vocab, device
        self.items = torch.from_numpy(_tower_items(catalogue, vocab))          # [V, 8]
        t0 = time.perf_counter()
        with torch.no_grad():
            vecs = [self.models[0].item_vectors(self.items[a:a + batch_size].to(device)).float().cpu()
                    for a in range(0, len(catalogue), batch_size)]
        self.item_vectors = torch.cat(vecs).numpy()                             # [V, 32]
        self.vector_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.index_kind = index
        self.index = build_index(self.item_vectors, index, device)
        #: where the faiss index runs ("cuda" only with faiss-gpu and an exact index)
        self.index_device = index_device(index, device)[0]
        self.index_seconds = time.perf_counter() - t0

    @classmethod
    def from_run(cls, run_dir: str | Path, data_dir: str | None = None, device: str = "auto",
                 index: str = "exact", cache_dir: str | None = None) -> "Cascade":
        """The cascade of a trained run folder; its catalogue is built from the run's days
        (training days and test day) of ``data_dir`` (default: the run's own data folder).  The
        folder is read under a shared lock: a run being trained is refused."""
        folder = RunFolder(run_dir)
        with folder.lock(shared=True):
            return cls.from_trained(folder.open_trained(resolve_device(device), data_dir), index,
                                    cache_dir)

    @classmethod
    def from_trained(cls, run: TrainedRun, index: str = "exact",
                     cache_dir: str | None = None) -> "Cascade":
        """The cascade of an opened run (:meth:`RunFolder.open_trained`)."""
        t0 = time.perf_counter()
        cat = load_catalogue(run.data_dir, run.run_days, run.spec,
                             run.config.get("tz", "Asia/Shanghai"), cache_dir=cache_dir,
                             history_len=run.config.get("seq_len", 50))
        seconds = time.perf_counter() - t0
        dev = next(run.models[0].parameters()).device
        out = cls(run.models, run.spec, cat, run.vocab, dev, index)
        out.catalogue_seconds = seconds
        out.run, out.saved, out.data_dir, out.cache_dir = run, run.config, run.data_dir, cache_dir
        return out

    def video_ids(self, rows: np.ndarray) -> np.ndarray:
        """Raw video ids of catalogue rows (-1 stays -1)."""
        rows = np.asarray(rows)
        return np.where(rows >= 0, self.catalogue.video_ids[np.maximum(rows, 0)] - 1, -1)

    def _inputs(self, context, history, history_mask) -> tuple[torch.Tensor, ...]:
        return tuple((x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, copy=True)))
                     .to(self.device) for x in (context, history, history_mask))

    @torch.no_grad()
    def user_vectors(self, context, history, history_mask) -> np.ndarray:
        """float32 [B, 32]: the retrieval tower's user vectors (the index's queries)."""
        u = self.models[0].user_vectors(*self._inputs(context, history, history_mask))
        return np.ascontiguousarray(u.float().cpu().numpy())

    @torch.no_grad()
    def recommend(self, context, history, history_mask, keep: Sequence[int]) -> list[np.ndarray]:
        """Per stage, the catalogue rows it keeps, best first: [B, keep[t]] int64.

        Inputs as the towers read them (compact vocabulary rows, e.g. a day after
        ``vocab.apply``): context [B, 8], history [B, H, 5], history_mask [B, H]."""
        keep = check_keep(keep, self.spec, len(self.catalogue))
        dev = self.device
        ctx, hist, hmask = self._inputs(context, history, history_mask)
        _, rows = self.index.search(self.user_vectors(ctx, hist, hmask), keep[0])  # [B, K1]
        out = [rows.astype(np.int64)]
        for t in range(1, len(keep)):
            prev = torch.from_numpy(out[-1])
            items = self.items[prev.clamp(min=0)].to(dev)                       # [B, K_t, 8]
            scores = self.models[t](ctx, hist, hmask, items).float().cpu()
            scores[prev < 0] = -float("inf")                                   # fewer than K found
            top = torch.topk(scores, keep[t], dim=1).indices                    # [B, K_{t+1}]
            out.append(torch.gather(prev, 1, top).numpy())
        return out


def positives(day, spec: CascadeSpec) -> np.ndarray:
    """Shifted video ids of each request's positive slots (first group), 0 where padded:
    [R, group_size]."""
    sl = spec.group_slice(spec.groups[0])
    ids = np.asarray(day.items)[:, sl, 0].astype(np.int64)
    return np.where(np.asarray(day.item_mask)[:, sl], ids, 0)


def evaluate_catalogue(cascade: Cascade, day, keep: Sequence[int], batch_size: int = 256,
                       max_requests: int | None = None, compare_exact: bool = False) -> dict:
    """Shares of each request's positives kept by each stage over the whole catalogue.

    ``day``: the raw DayData (shifted ids); the towers get it through the run's vocabulary."""
    keep = check_keep(keep, cascade.spec, len(cascade.catalogue))
    R = day.num_requests if max_requests is None else min(max_requests, day.num_requests)
    if R == 0:
        raise DataError(f"day {day.date}: no requests to serve")
    pos_rows = cascade.catalogue.rows_of(positives(day, cascade.spec)[:R])    # [R, P], -1 padded
    mapped = cascade.vocab.apply(day) if cascade.vocab is not None else day
    exact = build_index(cascade.item_vectors, "exact") if compare_exact else None
    survived = np.zeros((R, len(keep)))
    overlap = []
    t0 = time.perf_counter()
    for a in range(0, R, batch_size):
        b = min(a + batch_size, R)
        kept = cascade.recommend(mapped.context[a:b], mapped.history[a:b], mapped.history_mask[a:b], keep)
        pr = pos_rows[a:b]
        npos = np.maximum((pr >= 0).sum(1), 1)
        for t, rows in enumerate(kept):
            hit = (pr[:, :, None] == rows[:, None, :]).any(-1) & (pr >= 0)
            survived[a:b, t] = hit.sum(1) / npos
        if exact is not None:
            u = cascade.user_vectors(mapped.context[a:b], mapped.history[a:b], mapped.history_mask[a:b])
            overlap += list(recall_vs_exact(exact, u, kept[0]))
    seconds = time.perf_counter() - t0
    has = (pos_rows >= 0).any(1)
    out = {"day": day.date, "keep": list(keep), "index": cascade.index_kind,
           "catalogue_videos": len(cascade.catalogue), "requests": int(R),
           "requests_with_positives": int(has.sum()),
           "survival": {st: float(survived[has, t].mean()) if has.any() else float("nan")
                        for t, st in enumerate(cascade.spec.stage_names)},
           "final_top": keep[-1], "requests_per_s": R / seconds if seconds > 0 else None}
    out["final"] = out["survival"][cascade.spec.stage_names[-1]]
    if exact is not None:
        out["index_recall_vs_exact"] = float(np.mean(overlap))
    return out


#: what makes results comparable in one table (a table per value of these)
TABLE_KEYS = ("setting", "day", "keep", "index", "data_dir", "own_data")


def tables(results: list[dict]) -> list[str]:
    """Markdown: one table of mean ± std (ddof 1) per :data:`TABLE_KEYS` value, a row per
    (method, tag) in the registry's order, a column per stage."""
    from .loss import display_name, method_order

    order = method_order()
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(tuple(str(r[k]) for k in TABLE_KEYS), []).append(r)
    lines = []
    for key, rs in groups.items():
        head = dict(zip(TABLE_KEYS, key))
        stages = list(rs[0]["survival"])
        lines += ["", f"**{head['setting']}, day {head['day']}, keep {head['keep']}, index "
                      f"{head['index']}, data {head['data_dir']}"
                      f"{'' if rs[0]['own_data'] else ' (NOT the runs’ own data)'}**", "",
                  "| method | " + " | ".join(f"kept by {s}" for s in stages) + " | runs |",
                  "|---|" + "---|" * (len(stages) + 1)]
        by: dict[tuple, list[dict]] = {}
        for r in rs:
            by.setdefault((r["method"], r["tag"]), []).append(r)
        for (m, tag), runs in sorted(by.items(), key=lambda kv: (
                order.index(kv[0][0]) if kv[0][0] in order else len(order), kv[0])):
            cells = []
            for s in stages:
                v = np.array([r["survival"][s] for r in runs])
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
            name = display_name(m) + (f" [{tag}]" if tag else "")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return lines[1:]


def check_flags(a) -> torch.device:
    """Every flag of serve, before any work; returns the device."""
    if a.batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {a.batch_size}")
    if a.max_requests is not None and a.max_requests < 1:
        raise UsageError(f"--max_requests must be >= 1, got {a.max_requests}")
    if a.keep is not None and (any(k < 1 for k in a.keep)
                               or any(b >= x for x, b in zip(a.keep, a.keep[1:]))):
        raise UsageError(f"--keep must be positive and strictly decreasing, got {a.keep}")
    return resolve_device(a.device)


def serve_run(folder: RunFolder, a, device: torch.device, seen_keys: dict) -> dict:
    """Serve one run folder (locked for the whole of it) and write its catalogue metrics."""
    with folder.lock():
        saved = folder.config()
        key = saved.get("run_key")
        if key in seen_keys:
            raise UsageError(f"--run_dir {folder.path}: the same training as {seen_keys[key]} "
                             f"(run key {key}); each run is counted once")
        seen_keys[key] = str(folder.path)
        day_name = a.day or saved["test_day"]
        check_day(saved, day_name, a.allow_train_day, "--day")
        spec = folder.spec()
        keep = a.keep or default_keep(spec.num_stages)
        check_keep(keep, spec, 10**18)
        check_index_k(a.index, device, keep[0])
        t0 = time.perf_counter()
        run = folder.open_trained(device, a.data_dir)
        _, why = index_device(a.index, device)
        if why:
            print(f"warning: {why}", file=sys.stderr)
        opened = {d: run.load_day(d, a.cache_dir) for d in dict.fromkeys(run.run_days + [day_name])}
        digests = {d: day.stats["content_digest"] for d, day in opened.items()}
        cascade = Cascade.from_trained(run, a.index, a.cache_dir)
        build = time.perf_counter() - t0
        check_keep(keep, run.spec, len(cascade.catalogue))
        day = opened[day_name]
        r = evaluate_catalogue(cascade, day, keep, a.batch_size, a.max_requests,
                               compare_exact=a.index != "exact")
        r.update(run.identity() | {
            "data_dir": run.data_dir, "own_data": run.own_data(digests),
            "index_device": cascade.index_device, "setup_seconds": round(build, 3),
            "catalogue_seconds": round(cascade.catalogue_seconds, 3),
            "item_vector_seconds": round(cascade.vector_seconds, 3),
            "index_seconds": round(cascade.index_seconds, 3)})
        folder.write_result("catalogue_metrics", r)
    return r


def build_parser():
    from .parsing import OneLineParser

    ap = OneLineParser(prog="python -m deep_components.serve",
                       description="Serve trained cascades over the whole catalogue of a dataset.")
    ap.add_argument("--run_dir", nargs="+", required=True, help="trained run folder(s)")
    ap.add_argument("--data_dir", default=None, help="dataset (default: each run's own)")
    ap.add_argument("--cache_dir", default=None, help="day cache (default <data_dir>/.lcron_cache)")
    ap.add_argument("--day", default=None, help="day to serve (default: the run's test day)")
    ap.add_argument("--allow_train_day", action="store_true",
                    help="allow --day to be one of the run's training days")
    ap.add_argument("--keep", nargs="+", type=int, default=None,
                    help="videos kept by each stage, decreasing (default: 500 10 two-stage, "
                         "500 100 10 three-stage, 500 100 50 10 four-stage, ...)")
    ap.add_argument("--index", default="exact", choices=INDEXES,
                    help="faiss index of the retrieval stage: exact (flat inner product), ivf "
                         "(inverted lists) or hnsw (a graph); the approximate ones report their "
                         "recall against exact")
    ap.add_argument("--device", default="auto",
                    help="auto (cuda if available), cpu, cuda, cuda:N: where the towers run")
    ap.add_argument("--batch_size", type=int, default=256, help="requests per batch")
    ap.add_argument("--max_requests", type=int, default=None, help="serve only the first N")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        device = check_flags(a)
        folders = list(iter_unique([RunFolder(p) for p in a.run_dir]))
        results, seen = [], {}
        for folder in folders:
            r = serve_run(folder, a, device, seen)
            other = "" if r["own_data"] else f", on {r['data_dir']}: NOT the run's own data"
            tag = f" [{r['tag']}]" if r["tag"] else ""
            print(f"{r['method']}{tag} run {r['run_id']} ({r['setting']}, {r['day']}, {r['catalogue_videos']:,} "
                  f"videos, keep {r['keep']}, {r['index']}{other}): "
                  + ", ".join(f"kept by {s} {v:.4f}" for s, v in r["survival"].items())
                  + (f", index recall@{r['keep'][0]} vs exact {r['index_recall_vs_exact']:.4f}"
                     if "index_recall_vs_exact" in r else ""), flush=True)
            results.append(r)
        if len(results) > 1:
            print("\n".join(tables(results)))
    except (DataError, UsageError, ValueError, OSError) as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
