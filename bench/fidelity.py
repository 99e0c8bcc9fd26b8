"""The eight methods at a preset's training length: the ordering against the paper's, and joint
recall along the pass.

    python bench/fidelity.py [--preset paper-length | --data_dir D] [--settings two_stage three_stage]
        [--methods bce lcron ...] [--run_ids 30 31] [--points 10] [--out runs/fidelity-paper-length]
        [--threads 2] [--device cpu] [--batch_size 1024] [--max_segments N] [--report]

The data's last day is the test day, the one before it the validation day, every earlier day a
training day (the paper's shape with ``paper-length``: 22, 1, 1); a missing preset is generated
first.  Every (setting, method, run id) trains one pass in ``--points`` segments: the run stops
at 1/points, 2/points, ... of its steps (``--max_steps``), its towers are scored on the
validation day, and the next segment continues it (``--resume``: on the CPU exactly the
uninterrupted run), so the curve costs no extra training.  After the last segment the run is
evaluated as the launchers do (test day, validation day beside it).

**Resumable.**  Each run's curve (per point: validation joint recall, per-stage recall and the
group flow) is kept in ``<out>/curves/<setting>/<method>/run-<id>.json``, written after every segment; a finished run is skipped, an interrupted one continues from its last
checkpoint.  So the benchmark can be stopped (Ctrl-C, ``--max_segments``) and restarted, in as
many sittings as it takes.  Progress lines give the time left, estimated from this sitting's
seconds per training step of each setting.

Writes ``<out>/fidelity.md`` (per setting: the ``collect`` table with mean ± std and run counts,
the ``collect --compare`` table beside the paper's with Spearman ρ, where each method's cascade
cuts fall on the test day by logged group, and the steps at which the methods' mean validation
curves cross), ``<out>/curves.csv`` and ``<out>/curves_<setting>.png``,
from whatever has finished (``--report``: only that).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from deep_components.files import read_json, write_json  # noqa: E402

METHODS = ["bce", "icc", "rankflow", "fs_ranknet", "fs_lambdaloss", "arf", "arf_v2", "lcron"]


def split_days(data_dir: Path) -> tuple[list[str], str, str]:
    """(training days, validation day, test day): the last day tests, the one before validates."""
    from deep_components.data import list_days

    days = list_days(data_dir)
    if len(days) < 3:
        raise SystemExit(f"error: {data_dir} has {len(days)} days; the benchmark needs at least "
                         "three (training, validation, test)")
    return days[:-2], days[-2], days[-1]


def pass_steps(data_dir: Path, train_days: list[str], batch_size: int, setting: str) -> int:
    """Steps of one pass: each day gives ``requests // batch_size`` steps, as training takes them.
    A synthetic folder states its requests a day; any other day is opened as training opens it
    (``load_day``, the same default cache, so training reuses the conversion)."""
    from deep_components.data.layout import synthetic_info

    info = synthetic_info(data_dir)
    if info is not None:
        per_day = [int(info["params"]["requests_per_day"])] * len(train_days)
    else:
        from deep_components.data import load_day
        from deep_components.specs import get_spec

        per_day = [load_day(data_dir, d, get_spec(setting)).num_requests for d in train_days]
    steps = sum(n // batch_size for n in per_day)
    if steps < 1:
        raise SystemExit(f"error: --batch_size {batch_size} leaves no training step in {data_dir}")
    return steps


def checkpoints(total: int, points: int) -> list[int]:
    """The steps at which the curve is scored: ``points`` evenly spaced, the last the pass's end."""
    return sorted({max(1, round(total * k / points)) for k in range(1, points + 1)})


class Runner:
    """Runs ``python -m deep_components.<command>`` in a fresh process (the default), or in this
    one (``in_process``: tests, where start-up would dominate)."""

    def __init__(self, in_process: bool = False):
        self.in_process = in_process

    def __call__(self, command: str, args: list[str]) -> tuple[int, str]:
        if self.in_process:
            from deep_components.cli import main

            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    rc = main(None, command, args)
                except SystemExit as e:
                    rc = int(e.code or 0)
            return rc, err.getvalue()
        r = subprocess.run([sys.executable, "-m", f"deep_components.{command}", *args],
                           cwd=REPO, capture_output=True, text=True)
        return r.returncode, r.stderr


class Bench:
    def __init__(self, a: argparse.Namespace, data_dir: Path, runner: Runner):
        self.a, self.data_dir, self.run = a, data_dir, runner
        self.out = Path(a.out)
        self.train_days, self.valid_day, self.test_day = split_days(data_dir)
        self.total = pass_steps(data_dir, self.train_days, a.batch_size, a.settings[0])
        self.steps = checkpoints(self.total, a.points)
        self.rate: dict[str, list[float]] = {}        # setting -> [seconds, steps] this sitting
        self.eval_s: list[float] = []
        self.segments = 0
        self.states: dict[tuple[str, str, int], dict] = {}   # each run's state, read once

    # -- one run --------------------------------------------------------------------------
    def state_path(self, setting: str, method: str, rid: int) -> Path:
        return self.out / "curves" / setting / method / f"run-{rid}.json"

    def run_dir(self, setting: str, method: str, rid: int) -> Path:
        return self.out / setting / method / f"run-{rid}"

    def common(self, setting: str, method: str, rid: int) -> list[str]:
        return ["--setting", setting, "--method", method, "--run_id", str(rid),
                "--data_dir", str(self.data_dir), "--runs_root", str(self.out),
                "--device", self.a.device] + (["--threads", str(self.a.threads)] if self.a.threads else [])

    def save_state(self, setting: str, method: str, rid: int, st: dict) -> None:
        p = self.state_path(setting, method, rid)
        p.parent.mkdir(parents=True, exist_ok=True)
        write_json(p, st)
        self.states[setting, method, rid] = st

    def load_state(self, setting: str, method: str, rid: int) -> dict:
        """The run's state: from this sitting's memory, else its file (checked against this
        sitting's settings), else a new one."""
        if (setting, method, rid) in self.states:
            return self.states[setting, method, rid]
        p = self.state_path(setting, method, rid)
        want = {"data_dir": str(self.data_dir), "batch_size": self.a.batch_size,
                "total_steps": self.total, "steps": self.steps, "train_args": self.a.train_args}
        if p.exists():
            st = read_json(p)
            if {k: st.get(k) for k in want} != want:
                raise SystemExit(f"error: {p} was made with other settings ({ {k: st.get(k) for k in want} }); "
                                 "use another --out or remove it")
        else:
            st = want | {"points": [], "done": False}
        self.states[setting, method, rid] = st
        return st

    def check(self, rc: int, err: str, what: str) -> None:
        if rc != 0:
            tail = err.strip().splitlines()[-1:] or ["(no message)"]
            raise SystemExit(f"error: {what} failed (exit {rc}): {tail[0]}")

    def segment(self, setting: str, method: str, rid: int, st: dict, target: int) -> None:
        """Train to ``target`` steps, score the validation day, record the point."""
        from deep_components.run_folder import RunFolder

        folder = RunFolder(self.run_dir(setting, method, rid))
        summary = folder.summary() if folder.has_config() else None
        if not (summary and summary.get("steps") == target):
            resume = folder.checkpoint_path().exists() and bool(st["points"] or st.get("started"))
            args = self.common(setting, method, rid) + [
                "--train_days", *self.train_days, "--valid_day", self.valid_day,
                "--test_day", self.test_day, "--batch_size", str(self.a.batch_size),
                "--max_steps", str(target), "--no_progress",
                "--resume" if resume else "--overwrite", *self.a.train_args]
            st["started"] = True
            self.save_state(setting, method, rid, st)
            before = st["points"][-1]["step"] if st["points"] else 0
            t0 = time.perf_counter()
            self.check(*self.run("train", args), f"training {setting} {method} run {rid}")
            r = self.rate.setdefault(setting, [0.0, 0])
            r[0] += time.perf_counter() - t0
            r[1] += target - before
        t0 = time.perf_counter()
        self.check(*self.run("evaluate", self.common(setting, method, rid) + ["--test_day", self.valid_day]),
                   f"scoring {setting} {method} run {rid} on the validation day")
        self.eval_s.append(time.perf_counter() - t0)
        m = folder.read_result("metrics", ("joint_recall", "stages"))
        point = {"step": target, "valid_joint_recall": m["joint_recall"],
                 "stage_recall": {name: v["recall"] for name, v in m["stages"].items()},
                 "groups": {name: v["groups"] for name, v in m["stages"].items()}}
        st["points"].append(point)
        if target == self.total:
            self.check(*self.run("evaluate", self.common(setting, method, rid)),
                       f"testing {setting} {method} run {rid}")
            st["done"] = True
            st["test_joint_recall"] = folder.read_result("metrics", ("joint_recall",))["joint_recall"]
        self.save_state(setting, method, rid, st)
        self.segments += 1

    # -- the whole grid -------------------------------------------------------------------
    def remaining(self, jobs) -> float | None:
        """Seconds left: remaining steps at this sitting's rate per setting, plus evaluations."""
        left = 0.0
        for setting, method, rid in jobs:
            st = self.load_state(setting, method, rid)
            if st["done"]:
                continue
            r = self.rate.get(setting)
            if not r or not r[1]:
                return None
            done = st["points"][-1]["step"] if st["points"] else 0
            left += (self.total - done) * r[0] / r[1]
            left += (len(self.steps) - len(st["points"])) * (sum(self.eval_s) / max(len(self.eval_s), 1))
        return left

    def run_all(self) -> bool:
        """Every run's missing segments; False when --max_segments stopped it first."""
        a = self.a
        jobs = [(s, m, r) for s in a.settings for m in a.methods for r in a.run_ids]
        n_seg = len(jobs) * len(self.steps)
        t_start = time.perf_counter()
        for setting, method, rid in jobs:
            st = self.load_state(setting, method, rid)
            if st["done"]:
                print(f"{setting} {method} run {rid}: finished earlier, skipped", flush=True)
                continue
            for target in self.steps[len(st["points"]):]:
                if a.max_segments is not None and self.segments >= a.max_segments:
                    print(f"stopped after {self.segments} segment(s) (--max_segments); run again to "
                          "continue", flush=True)
                    return False
                self.segment(setting, method, rid, st, target)
                done = sum(len(self.load_state(*j)["points"]) for j in jobs)
                left = self.remaining(jobs)
                eta = "?" if left is None else time.strftime("%H:%M:%S", time.gmtime(left))
                print(f"[{done}/{n_seg}] {setting} {method} run {rid}: step {target}/{self.total}, "
                      f"validation joint recall {st['points'][-1]['valid_joint_recall']:.4f} | "
                      f"this sitting {time.perf_counter() - t_start:.0f} s, left ≈ {eta}", flush=True)
        return True

    # -- the report -------------------------------------------------------------------------
    def curves(self, setting: str, runs: dict[tuple[str, int], dict]):
        """pandas DataFrame: setting, method, run_id, step, valid_joint_recall: every point of a
        method's finished runs, as the tables count them (an unfinished run's early points would
        pull its method's mean curve apart from its late ones); a method with no finished run
        yet shows the points it has.  ``runs``: (method, run id) -> the run's state."""
        import pandas as pd

        rows = []
        for method in self.a.methods:
            done = [rid for rid in self.a.run_ids if runs[method, rid]["done"]]
            for rid in done or self.a.run_ids:
                for pt in runs[method, rid]["points"]:
                    rows.append({"setting": setting, "method": method, "run_id": rid,
                                 "step": pt["step"], "valid_joint_recall": pt["valid_joint_recall"]})
        return pd.DataFrame(rows, columns=["setting", "method", "run_id", "step", "valid_joint_recall"])

    def report(self) -> str:
        import pandas as pd

        from deep_components.collect import collect, compare, load_metrics
        from deep_components.plot import plot_curves

        self.out.mkdir(parents=True, exist_ok=True)
        parts, frames = [f"# Fidelity at {self.total} steps ({self.data_dir.name})", ""], []
        for setting in self.a.settings:
            runs = {(m, r): self.load_state(setting, m, r) for m in self.a.methods for r in self.a.run_ids}
            n_done = sum(st["done"] for st in runs.values())
            parts.append(f"## {setting.replace('_', '-')} ({n_done} of {len(runs)} runs finished)")
            parts.append("")
            done_methods = sorted({m for (m, _), st in runs.items() if st["done"]})
            if done_methods:
                with contextlib.redirect_stderr(io.StringIO()):
                    _, md = collect(self.out, setting, done_methods, self.out / "tables",
                                    test_day=self.test_day)
                    parts += [md, "", compare([self.out], setting, done_methods, self.test_day), ""]
                    parts += group_flow_table(load_metrics(self.out, setting, done_methods,
                                                           self.test_day), setting)
            df = self.curves(setting, runs)
            frames.append(df)
            if not df.empty:
                mean = df.groupby(["method", "step"])["valid_joint_recall"].agg(["mean", "min", "max"])
                n_runs = df.groupby("method")["run_id"].nunique()
                span = (f"{n_runs.min()}" if n_runs.min() == n_runs.max()
                        else f"{n_runs.min()}–{n_runs.max()}")
                plot_curves(mean.reset_index(), f"{setting}: validation joint recall along the pass "
                            f"({self.data_dir.name}, {span} run(s) per method)",
                            self.out / f"curves_{setting}.png")
                parts += ["Crossings of the mean validation curves (the later method is ahead after "
                          "the step):", ""] + crossings(mean["mean"].unstack("method")) + [""]
        if frames:
            pd.concat(frames).to_csv(self.out / "curves.csv", index=False)
        text = "\n".join(parts)
        (self.out / "fidelity.md").write_text(text + "\n")
        return text


def group_flow_table(metrics: list[dict], setting: str) -> list[str]:
    """Markdown lines: per method (mean over its runs' test-day ``groups``), the share of the
    ground-truth group each stage lets through in the cascade, then what the last stage's
    survivors are made of, by logged group.  Empty when no run carries the groups."""
    import numpy as np

    from deep_components.loss.registry import display_name
    from deep_components.specs import get_spec

    spec = get_spec(setting)
    names, last, pos = spec.stage_names, spec.stage_names[-1], spec.positive_group
    rows: dict[str, list[list[float]]] = {}
    for m in metrics:
        if not all("groups" in m["stages"][n] for n in names):
            continue
        flow = m["stages"]
        rows.setdefault(m["method"], []).append([flow[n]["groups"][pos]["survival"] for n in names]
                                                + [flow[last]["groups"][g]["share"] for g in spec.groups])
    if not rows:
        return []
    lines = [f"Where the cascade's cuts fall on the test day (mean over runs): the share of `{pos}` "
             f"(the ground truth) alive after each stage, and what {last}'s {spec.quotas[-1]} "
             "survivors are made of, by logged group:", "",
             "| method | " + " | ".join(f"{pos} after {n}" for n in names) + " | "
             + " | ".join(f"{last} set: {g}" for g in spec.groups) + " | runs |",
             "|---|" + "---|" * (len(names) + len(spec.groups) + 1)]
    order = [m for m in METHODS if m in rows] + sorted(set(rows) - set(METHODS))
    for method in order:
        v = np.mean(rows[method], axis=0)
        lines.append(f"| {display_name(method)} | " + " | ".join(f"{x:.3f}" for x in v)
                     + f" | {len(rows[method])} |")
    return lines + [""]


def crossings(table) -> list[str]:
    """``table``: mean validation joint recall, steps as rows, methods as columns.  One line per
    pair of methods whose order changes: the steps (the first point after each change) and who
    leads at the end."""
    table = table.dropna(how="any")
    methods = list(table.columns)
    lines = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            diff = (table[a] - table[b]).to_numpy()
            sign = [1 if d > 0 else -1 if d < 0 else 0 for d in diff]
            steps = [int(table.index[k]) for k in range(1, len(sign))
                     if sign[k] != 0 and sign[k] != sign[k - 1]]
            if steps:
                lead, other = (a, b) if sign[-1] > 0 else (b, a)
                lines.append(f"- {lead} over {other} after step {steps[-1]}"
                             + (f" (order changed at steps {', '.join(map(str, steps))})" if len(steps) > 1 else ""))
    return lines or ["- none: every pair keeps its order at every point"]


def ensure_data(preset: str, root: Path) -> Path:
    """``root`` (data/synthetic/<preset>), generated first when it holds no days."""
    from deep_components.data import list_days

    try:
        if list_days(root):
            return root
    except Exception:
        pass
    print(f"generating the {preset} preset into {root} ...", flush=True)
    r = subprocess.run([sys.executable, "-m", "deep_components.data.synthetic", "--out", str(root),
                        "--preset", preset], cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"error: generating {preset} failed (exit {r.returncode})")
    return root


def main(argv=None, runner: Runner | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default="paper-length", help="synthetic preset (data/synthetic/<preset>)")
    src.add_argument("--data_dir", default=None, help="a RecFlow-layout folder instead of a preset")
    ap.add_argument("--settings", nargs="+", default=["two_stage", "three_stage"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--run_ids", nargs="+", type=int, default=[30, 31])
    ap.add_argument("--points", type=int, default=10, help="validation scores along the pass")
    ap.add_argument("--batch_size", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="default runs/fidelity-<data folder name>")
    ap.add_argument("--max_segments", type=int, default=None,
                    help="stop after this many segments (run again to continue)")
    ap.add_argument("--report", action="store_true", help="only write the report of what finished")
    ap.add_argument("--train_args", nargs=argparse.REMAINDER, default=[],
                    help="extra training flags (the same for every run)")
    a = ap.parse_args(argv)
    if a.points < 1:
        ap.error("--points must be >= 1")
    data_dir = (Path(a.data_dir) if a.data_dir else REPO / "data" / "synthetic" / a.preset).resolve()
    if not a.data_dir and not a.report:
        ensure_data(a.preset, data_dir)
    a.out = a.out or str(REPO / "runs" / f"fidelity-{data_dir.name}")
    bench = Bench(a, data_dir, runner or Runner())
    print(f"{data_dir.name}: {len(bench.train_days)} training days, validation {bench.valid_day}, "
          f"test {bench.test_day}; {bench.total} steps a pass, scored at {bench.steps}", flush=True)
    finished = True if a.report else bench.run_all()
    print(bench.report())
    print(f"-> {Path(a.out) / 'fidelity.md'}")
    return 0 if finished else 3


if __name__ == "__main__":
    sys.exit(main())
