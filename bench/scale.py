"""Memory and speed at scale: day conversion, training and evaluation as a user runs them.

    python bench/scale.py --data_dir data/synthetic/small data/rs --settings two_stage three_stage \
        --batch_size 256 [--max_steps 50] [--convert] [--test] [--train_args --vocab full] \
        [--repo /path/to/another/checkout] [--rss_limit_gb 16] [--out bench_scale.md]

For every dataset and setting, each measurement runs in a fresh process (so its peak RSS is its
own), watched every 0.1 s: a process above ``--rss_limit_gb`` is killed and reported as such.

* ``--convert``: one training day converted from the raw files (no cache): seconds, peak RSS.
* training: ``deep_components/run_train{2,3}.py --loss_type lcron`` (plus ``--train_args``) on
  a warm day cache (converted beforehand in its own process, so the training number is
  training's): peak RSS of the whole process and requests/s of its training loop
  (train_summary.json).  ``--max_steps`` caps the steps (e.g. 50 on recflow-day).
* ``--test``: ``run_test{2,3}.py`` on the run folder: seconds, peak RSS, that metrics.json exists.

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
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
    err = p.communicate()[1].decode(errors="replace")
    return {"rc": p.returncode, "seconds": round(time.perf_counter() - t0, 2),
            "peak_gb": round(peak / 2 ** 30, 3), "killed": killed, "stderr": err[-2000:]}


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
    ap.add_argument("--train_args", nargs=argparse.REMAINDER, default=[])
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--rss_limit_gb", type=float, default=16.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
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
            cache = tempfile.mkdtemp(prefix="scale-cache-")
            cenv = {**env, "LCRON_CACHE_DIR": cache}
            if a.convert:
                r = watch([sys.executable, "-c", CONVERT, data_dir, train_days[0], setting, "raw", cache],
                          a.rss_limit_gb, repo, cenv)
                row["convert_s"] = r["seconds"] if r["rc"] == 0 else None
                row["convert_peak_gb"] = r["peak_gb"]
                row["convert_note"] = "killed" if r["killed"] else ("" if r["rc"] == 0 else r["stderr"][-300:])
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
                row["train_steps"] = s["steps"]
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
    keys = list(dict.fromkeys(k for r in rows for k in r))
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        md.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    text = "\n".join(md)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
