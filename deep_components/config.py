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

from .kernels import MODES as KERNEL_MODES

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
    ckpt_every: int = 200
    resume: bool = False
    skip_nonfinite: bool = False
    vocab: str = "compact"
    emb_optimizer: str = "adam"
    kernels: str = "auto"
    overwrite: bool = False
    allow_train_day: bool = False

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
    o.add_argument("--vocab", default="compact", choices=["compact", "full"],
                   help="embedding tables sized to the ids in the run's days (compact, default) or "
                        "to id_cnt (full); both train to the same rows")
    o.add_argument("--emb_optimizer", default="adam", choices=["adam", "lazy_adam"],
                   help="adam: dense Adam over every row (the paper's recipe); lazy_adam: sparse "
                        "gradients, Adam's update on the rows a batch touches only")
    o.add_argument("--kernels", default="auto", choices=list(KERNEL_MODES),
                   help="CPU kernels of DIN's attention and the embedding gradients: native C++ "
                        "(compiled on first use, cached), torch (pure PyTorch), auto (native when "
                        "a compiler builds it, default); same values either way")
    r = ap.add_argument_group("robustness")
    r.add_argument("--ckpt_every", type=int, default=200,
                   help="save the full training state every N steps (and at every day's end); 0 = days only")
    r.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    r.add_argument("--overwrite", action="store_true",
                   help="train into a run folder that already holds a run, deleting its results first")
    r.add_argument("--allow_train_day", action="store_true",
                   help="run_test: allow --test_day to be one of the run's training days")
    r.add_argument("--skip_nonfinite", action="store_true",
                   help="skip batches whose loss or gradient is NaN/inf (counted) instead of stopping")


def config_from_args(a: argparse.Namespace, setting: str, for_test: bool = False) -> RunConfig:
    opts = {}
    for item in a.loss_opt:
        if "=" not in item:
            from .runtime import UsageError

            raise UsageError(f"--loss_opt expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip()] = _parse_value(v.strip())
    device = a.device
    if a.cuda is not None and device in ("auto", "cuda"):
        device = f"cuda:{a.cuda}" if device == "cuda" else f"auto:{a.cuda}"
    data_dir = a.data_dir or a.root_path
    if data_dir is None and not for_test:     # run_test defaults to the run's own data folder
        data_dir = os.environ.get("DATA_DIR") or str(REPO_ROOT / "data")
    return RunConfig(
        setting=setting, loss_type=a.loss_type, run_id=a.run_id, tau=a.tau,
        batch_size=a.batch_size, eval_batch_size=a.eval_batch_size, emb_dim=a.emb_dim, lr=a.lr,
        seq_len=a.seq_len, seed=a.seed, device=device,
        data_dir=str(data_dir) if data_dir is not None else None,
        cache_dir=a.cache_dir, train_days=a.train_days, test_day=a.test_day, run_dir=a.run_dir,
        runs_root=a.runs_root, sort=a.sort, mask_mode=a.mask_mode, loss_options=opts, tz=a.tz,
        print_freq=a.print_freq, tag=a.tag, max_steps=a.max_steps, progress=not a.no_progress,
        threads=a.threads, ckpt_every=a.ckpt_every, resume=a.resume,
        skip_nonfinite=a.skip_nonfinite, vocab=a.vocab, emb_optimizer=a.emb_optimizer,
        kernels=a.kernels, overwrite=a.overwrite, allow_train_day=a.allow_train_day)


def validate(cfg: RunConfig) -> None:
    """Check every user-settable value up front; raise UsageError naming the flag."""
    import math

    from .cascade import get_spec
    from .loss import build_loss
    from .runtime import UsageError, resolve_device

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UsageError(msg)

    try:
        spec = get_spec(cfg.setting)
    except ValueError as e:
        raise UsageError(str(e)) from None
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}")
    need(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    from .distributed import context

    world = context().world
    need(cfg.batch_size % world == 0,
         f"--batch_size {cfg.batch_size} is the global batch and must be divisible by the number "
         f"of processes ({world})")
    check_eval_batch(cfg)
    need(math.isfinite(cfg.tau) and cfg.tau >= 0,
         f"--tau must be > 0 (or 0 for the method's default), got {cfg.tau}")
    need(cfg.emb_dim >= 1, f"--emb_dim must be >= 1, got {cfg.emb_dim}")
    need(1 <= cfg.seq_len <= 50, f"--seq_len must be in 1..50 (history rows), got {cfg.seq_len}")
    need(cfg.run_id >= 0, f"--epochs (the run id) must be >= 0, got {cfg.run_id}")
    need(cfg.seed is None or cfg.seed >= 0, f"--seed must be >= 0, got {cfg.seed}")
    need(cfg.max_steps is None or cfg.max_steps >= 1, f"--max_steps must be >= 1, got {cfg.max_steps}")
    need(cfg.ckpt_every >= 0, f"--ckpt_every must be >= 0, got {cfg.ckpt_every}")
    need(cfg.print_freq >= 0, f"--print_freq must be >= 0, got {cfg.print_freq}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.mask_mode in ("true", "reference"), "--mask_mode must be true or reference")
    check_tz(cfg.tz)
    need(cfg.vocab in ("compact", "full"), f"--vocab must be compact or full, got {cfg.vocab!r}")
    need(cfg.kernels in KERNEL_MODES,
         f"--kernels must be one of {', '.join(KERNEL_MODES)}, got {cfg.kernels!r}")
    need(cfg.emb_optimizer in ("adam", "lazy_adam"),
         f"--emb_optimizer must be adam or lazy_adam, got {cfg.emb_optimizer!r}")
    if cfg.emb_optimizer == "lazy_adam" and context().enabled and context().backend == "nccl":
        need(False, "--emb_optimizer lazy_adam gives sparse embedding gradients, which NCCL cannot "
                    "all-reduce; under torchrun on GPUs use --emb_optimizer adam (or the gloo backend)")
    if cfg.train_days and cfg.test_day:
        need(cfg.test_day not in cfg.train_days,
             f"--test_day {cfg.test_day} is also one of --train_days")
    for name, k in _cutoff_options(cfg.loss_kwargs()):
        need(isinstance(k, int) and spec.gt_num <= k <= spec.num_slots,
             f"--loss_opt {name}: cut-offs must be whole numbers in [gt_num={spec.gt_num}, "
             f"N={spec.num_slots}] for {spec.name}, got {k!r}")
    kw = cfg.loss_kwargs()
    if "tau" in kw:
        need(isinstance(kw["tau"], (int, float)) and kw["tau"] > 0, f"tau must be > 0, got {kw['tau']!r}")
    try:
        build_loss(cfg.loss_type, spec, mask_mode=cfg.mask_mode, **kw)
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    resolve_device(cfg.device)


def check_tz(tz: str) -> None:
    """A known IANA time zone, or a UsageError naming --tz."""
    import zoneinfo

    from .runtime import UsageError

    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise UsageError(f"--tz {tz!r}: unknown time zone (an IANA name such as Asia/Shanghai "
                         "or UTC)") from None


def check_eval_batch(cfg: RunConfig) -> None:
    from .runtime import UsageError

    if cfg.eval_batch_size < 1:
        raise UsageError(f"--infer_recall_batch_size must be >= 1, got {cfg.eval_batch_size}")


def validate_eval(cfg: RunConfig, train_days: list[str]) -> None:
    """The flags run_test uses, checked like training's; a training day as the test day needs
    --allow_train_day."""
    from .runtime import UsageError, resolve_device

    check_eval_batch(cfg)
    if cfg.test_day and cfg.test_day in train_days and not cfg.allow_train_day:
        raise UsageError(f"--test_day {cfg.test_day} is one of the run's training days; pass "
                         "--allow_train_day to evaluate on it anyway")
    resolve_device(cfg.device)


def _cutoff_options(kw: dict):
    """(name, value) of every cut-off / quota-like loss option given, one per stage value."""
    for name in ("k", "e2e_k", "support", "cutoffs", "top", "splits", "bce_slots"):
        v = kw.get(name)
        if v is None or v in ("gt", "quota"):
            continue
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            yield name, x
