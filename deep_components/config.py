"""One configuration object per run, built from command-line flags.

Flags of the paper's scripts are accepted with their meaning (``--epochs`` is the run id, as
there) plus ours.  ``--loss_opt name=value`` passes any loss option (METHODS §10 constants).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunConfig:
    setting: str = "two_stage"
    loss_type: str = "lcron"
    run_id: int = 30
    tau: float = 0.0
    batch_size: int = 1024
    eval_batch_size: int = 1024
    emb_dim: int = 8
    lr: float = 0.01
    seq_len: int = 50
    seed: int | None = None
    device: str = "auto"
    data_dir: str = str(REPO_ROOT / "data")
    cache_dir: str | None = None
    train_days: list[str] | None = None
    test_day: str | None = None
    run_dir: str | None = None
    runs_root: str = str(REPO_ROOT / "runs")
    sort: str | None = None
    mask_mode: str = "true"
    loss_options: dict[str, Any] = field(default_factory=dict)
    tz: str = "Asia/Shanghai"
    print_freq: int = 50
    tag: str = ""
    max_steps: int | None = None
    progress: bool = True
    threads: int | None = None

    def resolved_seed(self) -> int:
        return self.run_id if self.seed is None else self.seed

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        name = f"run-{self.run_id}" + (f"-{self.tag}" if self.tag else "")
        return Path(self.runs_root) / self.setting / self.loss_type / name

    def loss_kwargs(self) -> dict[str, Any]:
        """Options for ``build_loss``: --tau (> 0) and --sort map onto the loss's own options."""
        kw = dict(self.loss_options)
        if self.tau and self.tau > 0:
            kw.setdefault("tau", self.tau)
        if self.sort:
            kw.setdefault("sort", self.sort)
        return kw

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_common_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("paper-compatible flags")
    g.add_argument("--epochs", dest="run_id", type=int, default=30,
                   help="run id (the paper's scripts call it --epochs; 30..34 in the launchers)")
    g.add_argument("--loss_type", default="lcron", help="method name from the loss registry")
    g.add_argument("--tau", type=float, default=0.0,
                   help="sort temperature of ARF/ARF-v2/LCRON (0 = the method's default)")
    g.add_argument("--batch_size", type=int, default=1024)
    g.add_argument("--infer_realshow_batch_size", type=int, default=1024,
                   help="accepted for compatibility; evaluation uses --infer_recall_batch_size")
    g.add_argument("--infer_recall_batch_size", dest="eval_batch_size", type=int, default=1024,
                   help="evaluation batch size (also the size of the tie-breaking permutation blocks)")
    g.add_argument("--emb_dim", type=int, default=8)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--seq_len", type=int, default=50, help="history rows used (the most recent)")
    g.add_argument("--cuda", type=int, default=None, help="GPU index (with --device cuda/auto)")
    g.add_argument("--root_path", default=None, help="RecFlow folder (same as --data_dir)")
    g.add_argument("--print_freq", type=int, default=50, help="log every N steps")
    g.add_argument("--tag", default="", help="suffix of the run folder name")
    o = ap.add_argument_group("our flags")
    o.add_argument("--seed", type=int, default=None, help="random seed (default: the run id)")
    o.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    o.add_argument("--data_dir", default=None, help="RecFlow-layout folder (default ./data)")
    o.add_argument("--cache_dir", default=None, help="day cache (default <data_dir>/.lcron_cache)")
    o.add_argument("--train_days", nargs="+", default=None, help="dates (default: the split)")
    o.add_argument("--test_day", default=None, help="date (default: the split)")
    o.add_argument("--run_dir", default=None, help="run folder (default runs/<setting>/<loss>/run-<id>)")
    o.add_argument("--runs_root", default=str(REPO_ROOT / "runs"))
    o.add_argument("--sort", default=None, choices=["neural", "soft"], help="sort operator")
    o.add_argument("--mask_mode", default="true", choices=["true", "reference"])
    o.add_argument("--loss_opt", action="append", default=[], metavar="NAME=VALUE",
                   help="any loss option, e.g. --loss_opt terms=e2e (repeatable)")
    o.add_argument("--tz", default="Asia/Shanghai", help="time zone of the calendar features")
    o.add_argument("--max_steps", type=int, default=None, help="stop after this many steps")
    o.add_argument("--no_progress", action="store_true", help="no progress bars")
    o.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def config_from_args(a: argparse.Namespace, setting: str) -> RunConfig:
    opts = {}
    for item in a.loss_opt:
        if "=" not in item:
            raise SystemExit(f"error: --loss_opt expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip()] = _parse_value(v.strip())
    device = a.device
    if a.cuda is not None and device in ("auto", "cuda"):
        device = f"cuda:{a.cuda}" if device == "cuda" else f"auto:{a.cuda}"
    data_dir = a.data_dir or a.root_path or os.environ.get("DATA_DIR") or str(REPO_ROOT / "data")
    return RunConfig(
        setting=setting, loss_type=a.loss_type, run_id=a.run_id, tau=a.tau,
        batch_size=a.batch_size, eval_batch_size=a.eval_batch_size, emb_dim=a.emb_dim, lr=a.lr,
        seq_len=a.seq_len, seed=a.seed, device=device, data_dir=str(data_dir),
        cache_dir=a.cache_dir, train_days=a.train_days, test_day=a.test_day, run_dir=a.run_dir,
        runs_root=a.runs_root, sort=a.sort, mask_mode=a.mask_mode, loss_options=opts, tz=a.tz,
        print_freq=a.print_freq, tag=a.tag, max_steps=a.max_steps, progress=not a.no_progress,
        threads=a.threads)
