"""The run folder: the one module that knows a run folder's files by name and the rules that keep
them true to each other.

    <run>/.lock                 held while a process trains, evaluates or serves the folder
          config.json           the resolved configuration, the data's digests, the run key
          env.json              versions, device, threads, git commit
          loss_log.jsonl        one line per training step
          checkpoint.pt         the full training state (--resume)
          towers.pt             the trained towers (evaluate, serve)
          train_summary.json    steps, requests, seconds
          metrics.json          the evaluation of the towers (evaluate)
          valid_metrics.json    the same on the validation day, if the run has one
          catalogue_metrics.json  the full-catalogue evaluation (serve)
          tensorboard_events/   TensorBoard event files
          curves.png            the loss terms and learned weights over the steps
          export-<format>/      the towers exported for serving (export)

Every training writes a fresh ``run_key`` into config.json; towers.pt, train_summary.json and
every result carry it, and a file whose key differs from config.json's is never used.  A new
training (``--overwrite``) removes everything the folder holds first; a ``--resume`` removes
what described the earlier model (towers, summary, results) before it trains again.  Every
reader and writer holds the folder's lock (:class:`RunLock`): writers exclusively, the
collector shared.  Training, evaluation, serving and collecting all go through
:class:`RunFolder`; no other module opens these files.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import UsageError
from .files import read_json, write_json

if TYPE_CHECKING:
    import torch

CONFIG = "config.json"
ENV = "env.json"
LOSS_LOG = "loss_log.jsonl"
CHECKPOINT = "checkpoint.pt"
TOWERS = "towers.pt"
SUMMARY = "train_summary.json"
METRICS = "metrics.json"
VALID_METRICS = "valid_metrics.json"
CATALOGUE_METRICS = "catalogue_metrics.json"
TENSORBOARD = "tensorboard_events"
CURVES = "curves.png"
#: the towers exported for serving (deep_components.export), one folder per format
EXPORTS = ("export-onnx", "export-torchscript")
LOCK = ".lock"

#: every file a run folder can hold, in the order of the listing above, with what it holds
CONTENTS = {
    CONFIG: "the resolved configuration (days, seed, id counts, vocabulary sizes, loss options, "
            "synthetic marker, data digests, run_key: this training's identity)",
    ENV: "python/torch/numpy versions, device, threads, kernels, git revision",
    LOSS_LOG: "one line per step: loss and its components (e2e, single/<stage>, bce/<stage>, ...)",
    CHECKPOINT: "the full training state for --resume (written every --ckpt_every steps, at every "
                "day's end and where --max_steps stops)",
    TOWERS: "the trained towers, loss weights and the compact vocabulary (weights_only=True)",
    SUMMARY: "steps, requests, seconds, requests/s",
    METRICS: "evaluate: joint recall; per stage recall, NDCG@10, Kendall tau; test day, data "
             "folder and whether it is the run's own data; unknown_ids",
    VALID_METRICS: "evaluate, for a run with a validation day (--valid_day): the same metrics on "
                   "that day",
    CATALOGUE_METRICS: "serve: share of the positives each stage keeps over the whole catalogue; "
                       "day, keep, index, data folder",
    TENSORBOARD: "TensorBoard event files: loss terms, learned weights, requests/s, metrics",
    CURVES: "the loss terms and learned loss weights over the steps (smoothed)",
    **{e: "export: the towers as files another runtime loads, and their manifest"
       for e in EXPORTS},
}
#: result files: each carries the run key of the training it describes
RESULTS = {"metrics": METRICS, "valid_metrics": VALID_METRICS,
           "catalogue_metrics": CATALOGUE_METRICS}
#: what describes the trained model (removed when a --resume trains it further; the event
#: files stay, and the resumed training rewrites them from its checkpoint's step on)
MODEL_FILES = (TOWERS, SUMMARY, METRICS, VALID_METRICS, CATALOGUE_METRICS, CURVES) + EXPORTS
#: what a config.json must hold to be evaluated or served
CONFIG_KEYS = ("setting", "run_id", "data_dir", "test_day", "train_days")


def saved_method(saved: dict) -> str | None:
    """The method of a saved config / towers meta, whichever name it was saved under."""
    return saved.get("method", saved.get("loss_type"))


class RunLock:
    """A lock on a folder for the whole operation (``<folder>/.lock``, flock).

    Exclusive (training, evaluation, serving) or ``shared`` (readers such as the collector).  A
    process that cannot get it gets one UsageError naming the holder's pid; the lock goes with
    the process, so a killed run never leaves the folder locked."""

    def __init__(self, folder: Path, shared: bool = False, name: str = LOCK):
        self.path = Path(folder) / name
        self.shared = shared
        self.f = None

    def acquire(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise UsageError(f"{self.path.parent}: in use by another process (pid {holder}); "
                             "wait for it to finish or use another folder") from None
        if not self.shared:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
        self.f = f
        return self

    def release(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def __enter__(self) -> "RunLock":
        return self if self.f is not None else self.acquire()

    def __exit__(self, *_) -> None:
        self.release()


def results_lock(folder: Path, stem: str) -> RunLock:
    """The exclusive lock of one experiment's results ``<folder>/<stem>.*`` (e.g. streaming's),
    acquired: two experiments writing the same results are refused."""
    return RunLock(folder, name=f".{stem}{LOCK}").acquire()


def check_day(saved: dict, day: str | None, allow_train_day: bool, flag: str) -> None:
    """Evaluating (or serving) on one of the run's training days needs ``--allow_train_day``."""
    if day and day in saved["train_days"] and not allow_train_day:
        raise UsageError(f"{flag} {day} is one of the run's training days; pass "
                         "--allow_train_day to evaluate on it anyway")


def data_differences(saved: dict | None, current: dict, days: list[str]) -> list[str]:
    """What differs between two data digests ({"id_cnt": d, "days": {date: d}}) on ``days``."""
    if not saved:
        return []
    out = []
    if saved.get("id_cnt") != current.get("id_cnt"):
        out.append("others/id_cnt.pkl differs")
    changed = [d for d in days if saved.get("days", {}).get(d) != current.get("days", {}).get(d)]
    if changed:
        out.append(f"the content of {len(changed)} day(s) differs ({', '.join(changed[:3])}"
                   f"{', ...' if len(changed) > 3 else ''})")
    return out


class RunFolder:
    """One run folder (see the module docstring for its files)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._config: dict | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def _file(self, name: str) -> Path:
        return self.path / name

    # ------------------------------------------------------------------ what it holds, locks
    def holds(self) -> list[str]:
        """The run files present, in :data:`CONTENTS` order."""
        return [n for n in CONTENTS if self._file(n).exists()]

    def lock(self, shared: bool = False) -> RunLock:
        """Acquired lock (exclusive, or ``shared`` for readers); release() or use as a context."""
        return RunLock(self.path, shared).acquire()

    @staticmethod
    def under(root: str | os.PathLike, kind: str = "metrics") -> list["RunFolder"]:
        """Run folders ``root/<method>/<run>/`` that hold a ``kind`` result, sorted by path."""
        return [RunFolder(p.parent) for p in sorted(Path(root).glob(f"*/*/{RESULTS[kind]}"))]

    # ------------------------------------------------------------------------- configuration
    def has_config(self) -> bool:
        return self._file(CONFIG).is_file()

    def config(self) -> dict:
        """config.json, checked to be one this program wrote (UsageError naming it otherwise)."""
        if self._config is None:
            path = self._file(CONFIG)
            if not path.is_file():
                raise UsageError(f"{path}: not a run folder (no {CONFIG}); train first")
            saved = read_json(path)
            missing = [k for k in CONFIG_KEYS if not isinstance(saved, dict) or k not in saved]
            if missing:
                raise UsageError(f"{path}: not a run configuration of this program (missing "
                                 f"{missing})")
            if saved_method(saved) is None:
                raise UsageError(f"{path}: not a run configuration of this program (no method)")
            self._config = saved
        return self._config

    def spec(self):
        """The run's cascade spec: the registered one, or the one its config.json stores (a
        setting defined in an experiment file), registered here."""
        from .specs import spec_of

        saved = self.config()
        try:
            return spec_of(saved["setting"], saved.get("spec"), f"{self._file(CONFIG)}: spec")
        except ValueError as e:
            raise UsageError(str(e) if CONFIG in str(e) else f"{self._file(CONFIG)}: {e}") from None

    def run_key(self) -> str | None:
        """config.json's run key (None without a readable config.json)."""
        path = self._file(CONFIG)
        if not path.is_file():
            return None
        saved = read_json(path)
        return saved.get("run_key") if isinstance(saved, dict) else None

    # ------------------------------------------------------------------------------ training
    def check_can_train(self, resume: bool, overwrite: bool) -> None:
        """Before anything is touched: --resume needs a checkpoint; a folder that holds a run
        needs --resume or --overwrite (not both)."""
        if resume and overwrite:
            raise UsageError("--resume continues the run in the folder and --overwrite deletes it "
                             "first: pass one of them")
        if resume:
            if not self._file(CHECKPOINT).is_file():
                raise UsageError(f"{self._file(CHECKPOINT)}: no checkpoint to resume from (train "
                                 "without --resume first)")
            return
        existing = self.holds()
        if existing and not overwrite:
            raise UsageError(f"{self.path}: already holds a run ({', '.join(existing)}); continue "
                             "it with --resume, or replace it with --overwrite")

    def begin_training(self, config: dict, env: dict) -> None:
        """A new training: remove everything the folder holds (--overwrite), then write
        config.json (which carries the run key) and env.json."""
        self._clear(self.holds())
        write_json(self._file(CONFIG), config)
        write_json(self._file(ENV), env)
        self._config = None

    def begin_resume(self, step: int, updates: dict | None = None) -> str | None:
        """Continue the training: the towers, summary and results of the earlier model go, the
        loss log is cut back to ``step``, config.json takes ``updates`` (e.g. the data folder's
        new path); returns the run key."""
        self._clear(MODEL_FILES)
        self._truncate_loss_log(step)
        saved = read_json(self._file(CONFIG))
        if updates:
            write_json(self._file(CONFIG), {**saved, **updates})
            self._config = None
        return saved.get("run_key")

    def _clear(self, names) -> None:
        import shutil

        for name in names:
            path = self._file(name)
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def open_loss_log(self, append: bool):
        path = self._file(LOSS_LOG)
        try:
            return open(path, "a" if append else "w")
        except OSError as e:
            raise UsageError(f"{path}: cannot write the loss log ({e.strerror or e})") from None

    def loss_log_path(self) -> Path:
        return self._file(LOSS_LOG)

    def read_loss_log(self) -> list[dict]:
        path = self._file(LOSS_LOG)
        if not path.is_file():
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _truncate_loss_log(self, step: int) -> None:
        """Keep the lines of steps <= ``step`` (those after the checkpoint are redone)."""
        path = self._file(LOSS_LOG)
        if not path.is_file():
            return
        keep = [json.dumps(r) + "\n" for r in self.read_loss_log() if r["step"] <= step]
        with open(path, "w") as f:
            f.writelines(keep)

    def checkpoint_path(self) -> Path:
        return self._file(CHECKPOINT)

    def save_checkpoint(self, trainer, meta: dict, position: dict) -> float:
        from .checkpoint import save_checkpoint

        return save_checkpoint(self._file(CHECKPOINT), trainer, meta, position)

    def load_checkpoint(self) -> dict:
        """The checkpoint, loaded onto the CPU (tensors move to their parameters' devices when
        the modules and optimisers take them)."""
        from .checkpoint import load_checkpoint

        ckpt = load_checkpoint(self._file(CHECKPOINT))
        ckpt["meta"] = {**ckpt["meta"], "method": saved_method(ckpt["meta"])}  # also before the
        return ckpt                                                   # loss_type -> method rename

    def save_towers(self, models, loss_fn, spec, id_counts: dict, cfg, vocab, run_key) -> None:
        from .checkpoint import save_towers

        save_towers(self._file(TOWERS), models, loss_fn, spec, id_counts, cfg, vocab, run_key)

    def events(self, enabled: bool, purge_step: int | None = None):
        """The run's TensorBoard writer (watch.Events; a no-op when disabled)."""
        from .watch import Events

        return Events(self._file(TENSORBOARD), enabled, purge_step)

    def tensorboard_dir(self) -> Path:
        return self._file(TENSORBOARD)

    def write_curves(self, title: str) -> None:
        """``curves.png`` from the loss log."""
        from .watch import plot_curves

        plot_curves(self.read_loss_log(), self._file(CURVES), title)

    def curves_path(self) -> Path:
        return self._file(CURVES)

    def write_summary(self, summary: dict) -> None:
        write_json(self._file(SUMMARY), summary)

    def summary(self) -> dict | None:
        path = self._file(SUMMARY)
        return read_json(path) if path.is_file() else None

    def env(self) -> dict | None:
        path = self._file(ENV)
        return read_json(path) if path.is_file() else None

    # ------------------------------------------------------------------------------- reading
    def load_towers(self, device: "torch.device", check_key: bool = True):
        """(towers in cascade order, meta, vocabulary or None); ``check_key``: the towers must
        come from the training config.json describes."""
        from .checkpoint import load_towers

        path = self._file(TOWERS)
        models, meta, vocab = load_towers(path, device)
        if check_key and self.has_config():
            key = self.run_key()
            if meta.get("run_key") != key:
                raise UsageError(f"{path}: comes from another training than {self._file(CONFIG)} "
                                 f"describes (run key {meta.get('run_key')} vs {key}); retrain "
                                 "the run")
        return models, meta, vocab

    def open_trained(self, device: "torch.device", data_dir: str | None = None) -> "TrainedRun":
        """The trained run for evaluation or serving: config.json checked, towers of its
        training, a data folder that exists and whose id counts fit the towers."""
        from .data import read_id_counts
        from .data.id_counts import ID_FIELDS

        saved = self.config()
        spec = self.spec()
        own_dir = str(saved["data_dir"])
        data_dir = str(data_dir or own_dir)
        if not Path(data_dir).is_dir():
            raise UsageError(f"{data_dir}: the data folder of {self.path} is not there; pass "
                             "--data_dir")
        models, meta, vocab = self.load_towers(device)
        counts = read_id_counts(data_dir)
        diffs = [f"{f}: towers {meta['id_counts'].get(f)}, data {counts.get(f)}" for f in ID_FIELDS
                 if meta["id_counts"].get(f) != counts.get(f)]
        if diffs:
            raise UsageError(f"{self.path}: its towers were trained on another dataset than "
                             f"{data_dir} ({'; '.join(diffs[:3])}); evaluate on the run's data "
                             f"({own_dir})")
        return TrainedRun(self, saved, spec, models, meta, vocab, data_dir)

    # ------------------------------------------------------------------------------- results
    def write_result(self, kind: str, result: dict) -> None:
        """Write a result (``metrics`` or ``catalogue_metrics``); it must carry the run key of
        the training config.json describes."""
        if result.get("run_key") != self.run_key():
            raise UsageError(f"{self.path}: a result of run key {result.get('run_key')} does not "
                             f"belong to the training in {self._file(CONFIG)}")
        write_json(self._file(RESULTS[kind]), result)

    def result_path(self, kind: str) -> Path:
        return self._file(RESULTS[kind])

    def read_result(self, kind: str, required: tuple[str, ...] = ()) -> dict | None:
        """The result if it describes the folder's current training; None (with a warning on
        stderr) if it belongs to another one; UsageError if it is not this program's."""
        path = self._file(RESULTS[kind])
        if not path.is_file():
            return None
        r = read_json(path)
        missing = [k for k in required if not isinstance(r, dict) or k not in r]
        if missing:
            raise UsageError(f"{path}: not a {RESULTS[kind]} of this program (missing {missing}); "
                             "remove it or its folder")
        key = self.run_key()
        if key is None or r.get("run_key") != key:
            print(f"warning: {path}: skipped, it does not belong to the training in "
                  f"{self._file(CONFIG)} (evaluate the folder again)", file=sys.stderr)
            return None
        return r


@dataclass
class TrainedRun:
    """A trained run opened for evaluation or serving (:meth:`RunFolder.open_trained`)."""

    folder: RunFolder
    config: dict
    spec: Any
    models: list
    meta: dict
    vocab: Any
    data_dir: str

    @property
    def method(self) -> str:
        return saved_method(self.config)

    @property
    def run_days(self) -> list[str]:
        return [d for d in list(self.config["train_days"])
                + [self.config.get("valid_day"), self.config.get("test_day")] if d]

    def load_day(self, day: str, cache_dir: str | None = None):
        """``day`` of the data folder, converted with the run's own settings (raw ids)."""
        from .data import load_day

        return load_day(self.data_dir, day, self.spec, self.config.get("tz", "Asia/Shanghai"),
                        cache_dir=cache_dir, history_len=self.config.get("seq_len", 50))

    def own_data(self, days: dict[str, str], cache_dir: str | None = None) -> bool:
        """Whether ``days`` ({date: content digest}) and the id counts are those the run was
        trained on (by content; a run written before digests existed: by folder path)."""
        from .data.cache import id_count_digest

        saved = self.config.get("data_digest")
        if not saved:
            return Path(self.data_dir).resolve() == Path(self.config["data_dir"]).resolve()
        current = {"id_cnt": id_count_digest(self.data_dir), "days": days}
        known = [d for d in days if d in saved.get("days", {})]
        if len(known) < len(days):
            return False
        return not data_differences(saved, current, known)

    def identity(self) -> dict:
        """What every result of the run says about which run it is."""
        return {"setting": self.spec.name, "method": self.method, "run_id": self.config["run_id"],
                "tag": self.config.get("tag", "") or "", "run_dir": str(self.folder.path),
                "synthetic": bool(self.config.get("synthetic")), "run_key": self.config.get("run_key")}


def iter_unique(folders: list[RunFolder]) -> Iterator[RunFolder]:
    """Folders with distinct paths (resolved); a folder given twice is a UsageError."""
    seen: dict[Path, str] = {}
    for f in folders:
        p = f.path.resolve()
        if p in seen:
            raise UsageError(f"--run_dir {f.path}: given twice (also as {seen[p]}); each run is "
                             "counted once")
        seen[p] = str(f.path)
        yield f
