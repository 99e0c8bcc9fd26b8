"""Memory and speed at scale: day conversion, training and evaluation as a user runs them.

    python bench/scale.py --data_dir data/synthetic/small data/rs --settings two_stage three_stage \
        --batch_size 256 [--max_steps 50] [--convert] [--test] [--train_args --vocab full] \
        [--repo /path/to/another/checkout] [--rss_limit_gb 16] [--out bench_scale.md]

For every dataset and setting, each measurement runs in a fresh process (so its peak RSS is its
own), watched every 0.1 s: a process above ``--rss_limit_gb`` is killed and reported as such.

* ``--convert``: one training day converted from the raw files (no cache): seconds, peak RSS.
* training: ``deep_components/run_train{2,3}.py --loss_type lcron`` (plus ``--train_args``) on
  a warm day cache (converted beforehand in its own process, so the training number is
  training's): peak RSS of the whole process, requests/s of its training loop (train_summary.json:
  ``train_req_s`` over the whole loop with the vocabulary's build, day loads and checkpoints;
  ``steady_req_s`` over the steps after the first five, and their mean split into forward, loss,
  backward, finite check and optimiser).  ``--max_steps`` caps the steps (e.g. 50 on recflow-day).
* ``--test``: ``run_test{2,3}.py`` on the run folder: seconds, peak RSS, that metrics.json exists.

* ``--period1``: the paper's Period 1 (22 training days of 6,062,348 requests in all, then the
  test day) projected from the measured parts — conversion, the vocabulary's build, opening and
  mapping a day, steady-state training, a checkpoint, the test day's evaluation — each scaled
  from this dataset's day to a real day's requests (one table per setting).
* ``--touched``: the share of the vocabulary's videos and authors one batch touches, and the
  first training day has touched after 10%, 50% and all of its batches.

``--repo`` runs another checkout's entry points (e.g. the code before a change) on the same data.
Writes a Markdown table (stdout and ``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def watch(cmd: list[str], limit_gb: float, cwd: Path, env: dict) -> dict:
    """Run ``cmd``; returns rc, wall seconds, peak RSS (GB) and whether it was killed."""
    t0 = time.perf_counter()
    out_file, err_file = tempfile.TemporaryFile(), tempfile.TemporaryFile()   # never a full pipe
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out_file, stderr=err_file)
    peak, killed = 0, False
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM"):          # the kernel's own peak RSS
                        peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        if peak > limit_gb * 2 ** 30:
            p.kill()
            killed = True
            break
        time.sleep(0.1)
    p.wait()
    out, err = [], []
    for f, dst in ((out_file, out), (err_file, err)):
        f.seek(0)
        dst.append(f.read().decode(errors="replace"))
        f.close()
    out, err = out[0], err[0]
    return {"rc": p.returncode, "seconds": round(time.perf_counter() - t0, 2),
            "peak_gb": round(peak / 2 ** 30, 3), "killed": killed, "stderr": err[-2000:],
            "stdout": out[-4000:]}


CONVERT = """
import json, resource, sys, time
from deep_components.specs import get_spec
from deep_components.data import build_day_arrays, load_day
root, date, setting, mode, cache = sys.argv[1:6]
t = time.perf_counter()
if mode == "raw":
    day = build_day_arrays(root, date, get_spec(setting))
else:
    for d in date.split(","):
        day = load_day(root, d, get_spec(setting), cache_dir=cache)
print(json.dumps({"requests": day.num_requests, "seconds": round(time.perf_counter() - t, 2)}))
"""


TOUCHED = """
import json, sys
import numpy as np
from deep_components.specs import get_spec
from deep_components.data import load_day, list_days, default_split
from deep_components.data.batches import batch_indices
from deep_components.data.vocab import build_vocabulary
root, setting, cache, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spec = get_spec(setting)
train, test = default_split(list_days(root))
days = [load_day(root, d, spec, cache_dir=cache) for d in train + [test]]
vocab = build_vocabulary(days)
day = days[0]
out = {}
for field, col in (("video_id", 0), ("author_id", 1)):
    rows = len(vocab.ids[field])
    seen = np.zeros(int(vocab.ids[field][-1]) + 1, dtype=bool)
    per_step, marks = [], {}
    batches = batch_indices(day.num_requests, batch, seed=0)
    for i, b in enumerate(batches):
        ids = np.concatenate([day.items[b][..., col].ravel(), day.history[b][..., col].ravel()])
        ids = np.unique(ids[ids > 0])
        per_step.append(len(ids) / rows)
        seen[ids] = True
        for f in (0.1, 0.5, 1.0):
            if i + 1 == max(1, round(f * len(batches))):
                marks[f] = int(seen.sum()) / rows
    out[field] = {"vocab_rows": rows, "per_step": float(np.mean(per_step)),
                  "after_10%": marks[0.1], "after_50%": marks[0.5], "after_day": marks[1.0]}
print(json.dumps(out))
"""


PREP = """
import json, sys, time
from deep_components.specs import get_spec
from deep_components.data import load_day, list_days, default_split
from deep_components.data.vocab import build_vocabulary
root, setting, cache = sys.argv[1:4]
spec = get_spec(setting)
train, test = default_split(list_days(root))
days = [load_day(root, d, spec, cache_dir=cache) for d in train + [test]]
t = time.perf_counter()
vocab = build_vocabulary(days)
vocab_s = time.perf_counter() - t
t = time.perf_counter()
day = vocab.apply(load_day(root, train[0], spec, cache_dir=cache).in_memory(), in_place=True)
prep_s = time.perf_counter() - t
print(json.dumps({"vocab_days": len(days), "vocab_s": round(vocab_s, 2), "day_prep_s": round(prep_s, 2),
                  "day_requests": day.num_requests}))
"""

#: the paper's Period 1: 22 training days (6,062,348 requests), then the test day
PERIOD1_TRAIN_DAYS, PERIOD1_REQUESTS = 22, 6_062_348


def period1(row: dict) -> list[str]:
    """The Period-1 projection of one measured row: a Markdown table, one line per part."""
    per_day = row["day_requests"]
    scale = PERIOD1_REQUESTS / PERIOD1_TRAIN_DAYS / per_day          # real days vs this day
    parts = [
        ("convert 23 days (once)", 23 * row["convert_s"] * scale,
         f"23 × {row['convert_s']:.1f} s (one day, `--convert`)"),
        ("vocabulary of 23 days (once)", row["vocab_s"] * 23 / row["vocab_days"] * scale,
         f"{row['vocab_s']:.1f} s for {row['vocab_days']} days, × 23/{row['vocab_days']}"),
        ("open and map 22 training days", 22 * row["day_prep_s"] * scale,
         f"22 × {row['day_prep_s']:.1f} s"),
        (f"train {PERIOD1_REQUESTS:,} requests", PERIOD1_REQUESTS / row["steady_req_s"],
         f"at {row['steady_req_s']:,.0f} req/s (steady state)"),
        ("22 day checkpoints", 22 * row["checkpoint_s"], f"22 × {row['checkpoint_s']:.1f} s"),
        ("evaluate the test day", row["test_s"] * scale, f"{row['test_s']:.1f} s (`--test`)"),
    ]
    total = sum(p[1] for p in parts)
    out = [f"Period 1, {row['setting']}, {row.get('optimizer', 'adam')} (from {row['data']}; "
           f"a real day = {scale:.2f} × its {per_day:,} requests):", "",
           "| part | minutes | from |", "|---|---|---|"]
    out += [f"| {name} | {sec / 60:.1f} | {how} |" for name, sec, how in parts]
    out.append(f"| **total** | **{total / 60:.1f}** | |")
    return out


def days_of(data_dir: str) -> tuple[list[str], str]:
    sys.path.insert(0, str(REPO))
    from deep_components.data import default_split, list_days

    return default_split(list_days(data_dir))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", nargs="+", required=True)
    ap.add_argument("--settings", nargs="+", default=["two_stage", "three_stage"])
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--max_steps", type=int, default=None)
    ap.add_argument("--convert", action="store_true")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--no_train", action="store_true")
    ap.add_argument("--period1", action="store_true",
                    help="also project the paper's Period 1 (22 days, 6.06M requests, the test day) "
                         "from measured parts (implies --convert and --test)")
    ap.add_argument("--touched", action="store_true",
                    help="also the share of the run's vocabulary (videos, authors) a batch touches "
                         "and the first training day has touched after 10%%, 50%% and 100%% of it")
    ap.add_argument("--train_args", nargs=argparse.REMAINDER, default=[])
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--rss_limit_gb", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache_dir", default=None,
                    help="day cache to reuse (default: a fresh one per dataset and setting)")
    a = ap.parse_args(argv)
    if a.period1:
        a.convert = a.test = True
    sys.path.insert(0, str(REPO))
    from deep_components.run_folder import RunFolder

    repo = Path(a.repo).resolve()
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(a.threads)}
    rows = []
    for data_dir in a.data_dir:
        data_dir = str(Path(data_dir).resolve())
        train_days, test_day = days_of(data_dir)
        for setting in a.settings:
            n = 2 if setting == "two_stage" else 3
            row = {"data": Path(data_dir).name, "setting": setting}
            cache = a.cache_dir or tempfile.mkdtemp(prefix="scale-cache-")
            cenv = {**env, "LCRON_CACHE_DIR": cache}
            if a.convert:
                r = watch([sys.executable, "-c", CONVERT, data_dir, train_days[0], setting, "raw", cache],
                          a.rss_limit_gb, repo, cenv)
                row["convert_s"] = r["seconds"] if r["rc"] == 0 else None
                row["convert_peak_gb"] = r["peak_gb"]
                row["convert_note"] = "killed" if r["killed"] else ("" if r["rc"] == 0 else r["stderr"][-300:])
            if a.period1:
                # the day cache must be warm for the vocabulary's build (as training finds it)
                watch([sys.executable, "-c", CONVERT, data_dir, ",".join(train_days + [test_day]),
                       setting, "cache", cache], a.rss_limit_gb, repo, cenv)
                r = watch([sys.executable, "-c", PREP, data_dir, setting, cache], a.rss_limit_gb,
                          repo, cenv)
                if r["rc"] == 0:
                    row.update(json.loads(r["stdout"].strip().splitlines()[-1]))
            if a.touched:
                r = watch([sys.executable, "-c", TOUCHED, data_dir, setting, cache, str(a.batch_size)],
                          a.rss_limit_gb, repo, cenv)
                if r["rc"] == 0:
                    for field, t in json.loads(r["stdout"].strip().splitlines()[-1]).items():
                        row[f"{field} touched: step / 10% / 50% / day of"] = (
                            f"{t['per_step']:.2%} / {t['after_10%']:.1%} / {t['after_50%']:.1%} / "
                            f"{t['after_day']:.1%} of {t['vocab_rows']:,}")
                else:
                    row["touched_note"] = r["stderr"][-300:]
            if a.no_train:
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
                continue
            # warm the day cache (not measured as training)
            watch([sys.executable, "-c", CONVERT, data_dir, ",".join(train_days + [test_day]), setting,
                   "cache", cache], a.rss_limit_gb, repo, cenv)
            run_dir = Path(tempfile.mkdtemp(prefix="scale-run-"))
            cmd = [sys.executable, f"deep_components/run_train{n}.py", "--loss_type", "lcron",
                   "--epochs", "30", "--data_dir", data_dir, "--batch_size", str(a.batch_size),
                   "--run_dir", str(run_dir), "--no_progress", "--device", "cpu",
                   "--threads", str(a.threads), "--cache_dir", cache]
            if a.max_steps:
                cmd += ["--max_steps", str(a.max_steps)]
            r = watch(cmd + list(a.train_args), a.rss_limit_gb, repo, cenv)
            row["train_peak_gb"] = r["peak_gb"]
            row["train_wall_s"] = r["seconds"]
            if r["rc"] == 0:
                s = RunFolder(run_dir).summary()
                row["train_req_s"] = s["requests_per_s"]
                row["steady_req_s"] = s.get("steady_requests_per_s")      # older checkouts: none
                split = s.get("step_split_s")
                if split:
                    row["split fwd/loss/bwd/check/opt (s)"] = " / ".join(f"{v:.3f}" for v in split.values())
                row["train_steps"] = s["steps"]
                row["checkpoint_s"] = s.get("checkpoint_seconds", 0) / max(1, s.get("checkpoints", 1))
                cfgj = RunFolder(run_dir).config()
                row["vocab_video_rows"] = (cfgj.get("vocab_sizes") or {}).get("video_id")
            else:
                row["train_note"] = ("killed at the RSS limit" if r["killed"] else r["stderr"][-300:])
            if a.test and r["rc"] == 0:
                t = watch([sys.executable, f"deep_components/run_test{n}.py", "--run_dir", str(run_dir),
                           "--data_dir", data_dir, "--device", "cpu", "--cache_dir", cache],
                          a.rss_limit_gb, repo, cenv)
                row["test_s"], row["test_peak_gb"] = t["seconds"], t["peak_gb"]
                m = RunFolder(run_dir).read_result("metrics")
                row["metrics_json"] = m is not None
                if m is not None:
                    row["joint"] = round(m["joint_recall"], 4)
                    row["unknown_video_ids"] = (m.get("unknown_ids") or {}).get("video_id")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    projections = []
    if a.period1:
        opt = "lazy_adam" if "lazy_adam" in a.train_args else "adam"
        for r in rows:
            if all(r.get(k) is not None for k in ("convert_s", "vocab_s", "steady_req_s", "test_s")):
                projections += period1(r | {"optimizer": opt}) + [""]
        for r in rows:
            for k in ("vocab_days", "day_requests"):
                r.pop(k, None)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        md.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    text = "\n".join(md + ([""] + projections if projections else []))
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
