"""Generating a whole synthetic dataset, day by day in bounded memory, and its summary."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from .. import layout
from .history import collect_views, day_views, histories, prehistory, recent_cate2
from .params import WorldParams
from .simulation import plan_day, simulate_requests
from .world import build_world
from .writer import DayWriter


def generate(out: str | os.PathLike, params: WorldParams, seed: int = 0, *, preset: str = "custom",
             verbose: bool = True) -> dict:
    """Generate a dataset under ``out``; returns a summary dict (also written to SYNTHETIC.json).

    Day by day, and within a day ``params.chunk_requests`` requests at a time (requests are in
    time order, so a chunk's histories only need views of earlier chunks and days): memory
    follows one chunk and the views so far, not the dataset."""
    params.validate()
    t0 = time.perf_counter()
    out = Path(out)
    for sub in (layout.ALL_STAGE, layout.REALSHOW, layout.HISTORY_DIR, layout.REQUEST_DICT_DIR,
                "others"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = build_world(params, rng)
    pre, n_pre = prehistory(w, rng, first_request_id=0)
    next_rid = n_pre
    view_parts = [pre]
    start = dt.date.fromisoformat(params.start_date)
    dates, rows = [], 0
    R = params.requests_per_day
    chunk = params.chunk_requests or R
    session = params.w_recent and params.stage_views is not None
    views = collect_views(view_parts)           # every effective view before the next chunk
    for day in range(params.days):
        date = (start + dt.timedelta(days=day)).isoformat()
        # a day in one piece keeps the draw order of the presets made before chunking existed
        plan = plan_day(w, rng, day, next_rid, cuts=chunk < R)
        next_rid += R
        writer = DayWriter(out, date)
        for a in range(0, R, chunk):
            sl = slice(a, min(a + chunk, R))
            recent = (recent_cate2(w, views, plan.user[sl], plan.ts_ms[sl], params.recent_views)
                      if session else None)
            del views                           # not held while the chunk is simulated
            lg = simulate_requests(w, rng, plan, sl, recent)
            view_parts.append(day_views(lg))
            views = collect_views(view_parts)
            writer.write(w, lg, histories(w, views, lg.user, lg.ts_ms))
            del lg
        rows += writer.close()
        dates.append(date)
        if verbose:
            print(f"  {date}: {R} requests", file=sys.stderr)
    counts = dict(params.id_space or params.entity_counts())
    counts["request_id"] = next_rid
    # the released file's spelling: a leading space on the level-two category key
    id_cnt = {(" " + k if k == "category_level_two" else k): int(v) for k, v in counts.items()}
    with open(out / layout.ID_COUNT_FILE, "wb") as f:
        pickle.dump(id_cnt, f, protocol=4)
    train, test = layout.default_split(dates) if len(dates) >= 2 else (dates, None)
    summary = {
        "synthetic": True, "preset": preset, "seed": seed, "days": dates,
        "train_days": train, "test_day": test, "requests": params.requests_per_day * params.days,
        "all_stage_rows": rows, "seconds": round(time.perf_counter() - t0, 2),
        "params": dataclasses.asdict(params),
    }
    with open(out / layout.SYNTHETIC_MARKER, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def describe(summary: dict, out: str | os.PathLike) -> str:
    p = summary["params"]
    lines = [
        f"Synthetic RecFlow dataset (preset {summary['preset']}, seed {summary['seed']}) at {out}",
        "  THIS IS SIMULATED DATA, not RecFlow: results on it say nothing about the paper's numbers.",
        f"  days       {summary['days'][0]} ... {summary['days'][-1]} ({len(summary['days'])})",
        f"  train/test {len(summary['train_days'])} days / {summary['test_day']}",
        f"  requests   {summary['requests']:,} ({p['requests_per_day']:,} per day), "
        f"{summary['all_stage_rows']:,} all_stage rows",
        f"  world      {p['users']:,} users, {p['videos']:,} videos, {p['authors']:,} authors, "
        f"{p['cate1']} / {p['cate2']} categories, pool {p['pool_size']} per request",
        f"  generated in {summary['seconds']:.1f}s",
    ]
    return "\n".join(lines)
