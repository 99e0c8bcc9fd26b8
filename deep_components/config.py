"""One configuration object per run; its fields declare the command-line flags.

Every :class:`RunConfig` field that is a flag carries its flag names, help and group in its
``metadata`` (``_flag``), and :func:`add_run_flags` turns the fields into argparse options, so a
flag is written once.  The paper's scripts' flag names are accepted as aliases with their meaning
(``--epochs`` is the run id, ``--loss_type`` the method, ``--root_path`` the data folder,
``--infer_recall_batch_size`` the evaluation batch).  ``--loss_opt name=value`` passes any loss
option (docs/methods.md lists every constant).
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
from .matmul import MODES as MATMUL_MODES
from .run_folder import saved_method

#: where data/ and runs/ are by default: the checkout the package runs from (a clone), or the
#: current folder (an installed package)
REPO_ROOT = (Path(__file__).resolve().parent.parent
             if (Path(__file__).resolve().parent.parent / "two_stage").is_dir() else Path.cwd())


#: argparse groups of the flags, in --help order
FLAG_GROUPS = {"cascade": "cascade", "paper": "the paper's flags (same names and meaning)",
          "ours": "our flags", "robust": "robustness"}
#: flags that only shape a training: evaluation uses the run's own values, and one given to
#: evaluation must equal the run's (field names)
TRAINING_ONLY = ("tau", "batch_size", "emb_dim", "lr", "seq_len", "print_freq", "seed",
                 "precision",
                 "train_days", "valid_day", "sort", "mask_mode", "loss_options", "tz", "max_steps", "vocab",
                 "emb_optimizer", "ckpt_every", "resume", "overwrite", "skip_nonfinite")
#: flags of evaluation only
EVAL_ONLY = ("allow_train_day",)
#: accepted for compatibility with the paper's scripts and ignored (flag -> help)
IGNORED_FLAGS = {"--infer_realshow_batch_size":
                 "accepted for compatibility; evaluation uses --infer_recall_batch_size"}


def _flag(default: Any, help: str, *flags: str, group: str = "ours", eval_help: str | None = None,
          **argparse_kw: Any):
    """A RunConfig field that is a command-line option: ``flags`` (first = our name, the others
    aliases; default ``--<field name>``), ``help``, argparse keywords (type, choices, nargs, ...).
    ``cli_default`` in argparse_kw: the flag's default when it differs from the field's;
    ``eval_help``: the help evaluation shows, where the flag means something else there."""
    meta = {"flags": flags, "help": help, "group": group, "eval_help": eval_help,
            "argparse": argparse_kw}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    setting: str = _flag("two_stage", "cascade setting: a registered spec "
                         "(two_stage, three_stage, four_stage, ...)", group="cascade")
    method: str = _flag("lcron", "method name from the loss registry (the paper: --loss_type)",
                        "--method", "--loss_type", group="paper")
    run_id: int = _flag(30, "run id, also the default seed (the paper's scripts call it --epochs; "
                        "30..34 in the launchers)", "--run_id", "--epochs", group="paper", type=int)
    tau: float = _flag(0.0, "sort temperature of ARF/ARF-v2/LCRON (0 = the method's default)",
                       group="paper", type=float)
    batch_size: int = _flag(1024, "training batch (the global batch under torchrun)", group="paper",
                            type=int)
    eval_batch_size: int = _flag(1024, "evaluation batch (also the size of the tie-breaking "
                                 "permutation blocks)", "--eval_batch_size",
                                 "--infer_recall_batch_size", group="paper", type=int)
    emb_dim: int = _flag(8, "embedding dimension", group="paper", type=int)
    lr: float = _flag(0.01, "Adam learning rate", group="paper", type=float)
    seq_len: int = _flag(50, "history rows used (the most recent)", group="paper", type=int)
    print_freq: int = _flag(50, "log every N steps", group="paper", type=int)
    tag: str = _flag("", "suffix of the run folder name", group="paper")
    cuda: int | None = _flag(None, "GPU index (with --device cuda/auto)", group="paper", type=int)
    seed: int | None = _flag(None, "random seed (default: the run id)", type=int)
    device: str = _flag("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    data_dir: str | None = _flag(str(REPO_ROOT / "data"), "RecFlow-layout folder (default $DATA_DIR "
                                 "or ./data)", "--data_dir", "--root_path", cli_default=None,
                                 eval_help="RecFlow-layout folder (default: the run's own, as "
                                           "recorded when it was trained)")
    cache_dir: str | None = _flag(None, "day cache (default <data_dir>/.lcron_cache)")
    train_days: list[str] | None = _flag(None, "dates (default: the split)", nargs="+")
    test_day: str | None = _flag(None, "date (default: the split: the paper's test day, else the "
                                 "last day)", eval_help="date (default: the run's own test day)")
    valid_day: str | None = _flag(None, "validation day: a date, or auto (the day before the test "
                                  "day); held out of the training days and evaluated beside the "
                                  "test day; default: none")
    run_dir: str | None = _flag(None, "run folder (default <runs_root>/<setting>/<method>/run-<id>)")
    runs_root: str = _flag(str(REPO_ROOT / "runs"), "where run folders go")
    sort: str | None = _flag(None, "sort operator", choices=["neural", "soft"])
    mask_mode: str = _flag("per_slot", "padded slots: each slot's own mask (per_slot) or the "
                           "reference's prefix-from-count (count_prefix); true / reference are the "
                           "older spellings",
                           choices=["per_slot", "count_prefix", "true", "reference"])
    loss_options: dict[str, Any] = _flag({}, "any loss option, e.g. --loss_opt terms=e2e "
                                         "(repeatable)", "--loss_opt", action="append",
                                         metavar="NAME=VALUE", cli_default=[])
    tz: str = _flag("Asia/Shanghai", "time zone of the calendar features")
    max_steps: int | None = _flag(None, "stop after this many steps", type=int)
    progress: bool = _flag(True, "no progress bars", "--no_progress", action="store_false")
    threads: int | None = _flag(None, "torch CPU threads", type=int)
    tensorboard: bool = _flag(True, "write no TensorBoard event files (they are written when "
                              "tensorboard is installed)", "--no_tensorboard", action="store_false")
    vocab: str = _flag("compact", "embedding tables sized to the ids in the run's days (compact, "
                       "default) or to id_cnt (full); both train to the same rows",
                       choices=["compact", "full"])
    emb_optimizer: str = _flag("adam", "adam: dense Adam over every row (the paper's recipe); "
                               "lazy_adam: sparse gradients, Adam's update on the rows a batch "
                               "touches only", choices=["adam", "lazy_adam"])
    kernels: str = _flag("auto", "CPU kernels of DIN's attention, the embedding gradients and "
                         "Kendall tau: native C++ (compiled on first use, cached), torch (pure "
                         "PyTorch), auto (native when a compiler builds it, default). The "
                         "embedding gradients and Kendall tau are bit-identical either way; DIN's "
                         "attention equals PyTorch's to float rounding, so trained towers differ "
                         "at rounding level", choices=list(KERNEL_MODES))
    matmul: str = _flag("auto", "library of the towers' fp32 products on the CPU: mkl (torch's "
                        "default), onednn, or auto (oneDNN on AMD CPUs, where MKL runs its generic "
                        "kernels; MKL otherwise). Values agree to float32 rounding",
                        choices=list(MATMUL_MODES))
    precision: str = _flag("fp32", "fp32 (exact, default), bf16 or fp16: the towers under autocast; "
                           "losses, labels and metrics stay fp32; fp16 with a gradient scaler",
                           choices=["fp32", "bf16", "fp16"])
    dist_timeout: float = _flag(120.0, "minutes a torchrun process group waits in a collective "
                                "(rank 0 converting real RecFlow days while the others wait)",
                                type=float)
    ckpt_every: int = _flag(200, "save the full training state every N steps (and at every day's "
                            "end); 0 = days only", group="robust", type=int)
    resume: bool = _flag(False, "continue the run from its last checkpoint", group="robust",
                         action="store_true")
    overwrite: bool = _flag(False, "train into a run folder that already holds a run, deleting "
                            "its results first", group="robust", action="store_true")
    allow_train_day: bool = _flag(False, "evaluation: allow --test_day to be one of the run's "
                                  "training days", group="robust", action="store_true")
    skip_nonfinite: bool = _flag(False, "skip batches whose loss or gradient is NaN/inf (counted) "
                                 "instead of stopping", group="robust", action="store_true")

    def resolved_seed(self) -> int:
        return self.run_id if self.seed is None else self.seed

    def resolved_run_dir(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        name = f"run-{self.run_id}" + (f"-{self.tag}" if self.tag else "")
        return Path(self.runs_root) / self.setting / self.method / name

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
        """From a saved config.json (one written before the rename calls the method loss_type)."""
        method = saved_method(d)
        d = dict(d, method=method) if method is not None else d
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_run_flags(ap: argparse.ArgumentParser, with_setting: bool = True,
                  action: str = "train") -> None:
    """One argparse option per flag field of RunConfig (``--setting`` only ``with_setting``).
    ``action`` "evaluate": the evaluation's help, and the training-only flags in a group of their
    own (accepted with the run's own values, for the paper's scripts; checked)."""
    from .specs import SPECS

    groups = {k: ap.add_argument_group(title) for k, title in FLAG_GROUPS.items()
              if with_setting or k != "cascade"}
    if action == "evaluate":
        groups["training"] = ap.add_argument_group(
            "training flags (evaluation uses the run's own values; a flag given here must equal "
            "the run's, or it is an error)")
    skip = EVAL_ONLY if action == "train" else ()
    for f in dataclasses.fields(RunConfig):
        meta = f.metadata
        if "flags" not in meta or (f.name == "setting" and not with_setting) or f.name in skip:
            continue
        kw = dict(meta["argparse"])
        default = kw.pop("cli_default", f.default if f.default is not dataclasses.MISSING
                         else f.default_factory())
        group, help = meta["group"], meta["help"]
        if f.name == "setting":               # checked by the registry (files add settings)
            help = f"{help}; registered: {', '.join(sorted(SPECS))}"
        if action == "evaluate":
            group = "training" if f.name in TRAINING_ONLY else group
            help = meta["eval_help"] or help
        groups[group].add_argument(*(meta["flags"] or (f"--{f.name}",)), dest=f.name,
                                   default=default, help=help, **kw)
    for name, help in IGNORED_FLAGS.items():
        groups["paper"].add_argument(name, default=None, help=help)


def given_flags(ap: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dests of the options that ``argv`` names (whatever their values), for a parser whose
    ``parse_args(argv)`` already succeeded."""
    defaults = [(a, a.default) for a in ap._actions]
    try:
        for a, _ in defaults:
            a.default = argparse.SUPPRESS
        ns, _ = ap.parse_known_args(argv)
    finally:
        for a, d in defaults:
            a.default = d
    return set(vars(ns))


def config_from_args(a: argparse.Namespace, setting: str | None = None,
                     for_evaluation: bool = False, file_values: dict | None = None,
                     given: set[str] | frozenset = frozenset(), source: str = "") -> RunConfig:
    """The RunConfig of parsed flags; ``setting`` fixes the cascade (the per-setting wrappers).
    ``file_values`` (an experiment file's, from ``source``) set what the command line did not
    (``given``: the flags it named); loss options merge, the command line's winning.  The loss
    options are parsed (NAME=VALUE, Python literals), ``--cuda N`` goes into the device, and the
    data folder defaults to $DATA_DIR or ./data (evaluation: the run's own)."""
    from .errors import UsageError

    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(RunConfig)
              if hasattr(a, f.name)}
    opts = {}
    for item in values["loss_options"]:
        if "=" not in item:
            raise UsageError(f"--loss_opt expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k.strip()] = _parse_value(v.strip())
    for k, v in (file_values or {}).items():
        if k == "loss_options":
            opts = {**v, **opts}
        elif k not in given:
            values[k] = v
    values["loss_options"] = opts
    if setting is not None:
        if file_values and file_values.get("setting", setting) != setting:
            raise UsageError(f"{source}: setting = {file_values['setting']!r}, but this command "
                             f"is for {setting}")
        values["setting"] = setting
    from .loss.base import canonical_mask_mode

    values["mask_mode"] = canonical_mask_mode(values["mask_mode"])
    device, cuda = values["device"], values.get("cuda")
    if cuda is not None and device in ("auto", "cuda"):
        values["device"] = f"cuda:{cuda}" if device == "cuda" else f"auto:{cuda}"
    if values["data_dir"] is None and not for_evaluation:  # run_test defaults to the run's own data
        values["data_dir"] = os.environ.get("DATA_DIR") or str(REPO_ROOT / "data")
    return RunConfig(**values)


def validate(cfg: RunConfig) -> None:
    """Check every user-settable value up front; raise UsageError naming the flag."""
    import math

    from .specs import get_spec
    from .loss import build_loss
    from .data.layout import is_date
    from .devices import resolve_device
    from .errors import UsageError

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UsageError(msg)

    try:
        spec = get_spec(cfg.setting)
    except ValueError as e:
        raise UsageError(str(e)) from None
    need(math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a positive number, got {cfg.lr}")
    need(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    from .distributed import check_timeout, context

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
    check_timeout(cfg.dist_timeout)
    for f in dataclasses.fields(RunConfig):     # every field with choices, as its flag declares
        choices, value = f.metadata.get("argparse", {}).get("choices"), getattr(cfg, f.name)
        need(not choices or value is None or value in choices,
             f"{_flag_name(f.name)} must be one of {', '.join(choices or ())}, got {value!r}")
    check_tz(cfg.tz)
    if cfg.emb_optimizer == "lazy_adam" and context().enabled and context().backend == "nccl":
        need(False, "--emb_optimizer lazy_adam gives sparse embedding gradients, which NCCL cannot "
                    "all-reduce; under torchrun on GPUs use --emb_optimizer adam (or the gloo backend)")
    if cfg.train_days and cfg.test_day:
        need(cfg.test_day not in cfg.train_days,
             f"--test_day {cfg.test_day} is also one of --train_days")
    if cfg.valid_day not in (None, "auto"):
        need(is_date(cfg.valid_day), f"--valid_day must be a date (YYYY-MM-DD) or auto, got "
                                      f"{cfg.valid_day!r}")
        need(cfg.valid_day != cfg.test_day, f"--valid_day {cfg.valid_day} is also the --test_day")
        need(not cfg.train_days or cfg.valid_day not in cfg.train_days,
             f"--valid_day {cfg.valid_day} is also one of --train_days")
    try:                     # the method checks its own options (names, lengths, ranges)
        build_loss(cfg.method, spec, mask_mode=cfg.mask_mode, **cfg.loss_kwargs())
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    resolve_device(cfg.device)


def check_tz(tz: str) -> None:
    """A known IANA time zone, or a UsageError naming --tz."""
    from .data.timefeat import check_tz as check
    from .errors import UsageError

    try:
        check(tz)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_eval_batch(cfg: RunConfig) -> None:
    from .errors import UsageError

    if cfg.eval_batch_size < 1:
        raise UsageError(f"--infer_recall_batch_size must be >= 1, got {cfg.eval_batch_size}")


def validate_evaluation(cfg: RunConfig, saved: dict, given: set[str] | frozenset = frozenset()) -> None:
    """The flags evaluation uses, checked like training's, against the run's config.json
    ``saved``: every training-only flag in ``given`` (the flags the command line named) must
    equal the run's own value, ``--method`` must name the run's method; a training day as the
    test day needs --allow_train_day."""
    from .run_folder import check_day
    from .devices import resolve_device
    from .errors import UsageError

    check_eval_batch(cfg)
    if cfg.threads is not None and cfg.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {cfg.threads}")
    if "tz" in given:
        check_tz(cfg.tz)
    method = saved_method(saved)
    if "method" in given and cfg.method != method:
        raise UsageError(f"--method {cfg.method}: the run in {cfg.resolved_run_dir()} was trained "
                         f"with {method}")
    for name in sorted(set(given) & set(TRAINING_ONLY)):
        flag = _flag_name(name)
        if name not in saved:
            raise UsageError(f"{flag} is a training flag; evaluation uses the run as it was "
                             "trained (drop it)")
        mine, theirs = getattr(cfg, name), saved[name]
        if name == "train_days":
            mine, theirs = sorted(mine or []), sorted(theirs or [])
        if mine != theirs:
            raise UsageError(f"{flag} {_show(getattr(cfg, name))}: the run in "
                             f"{cfg.resolved_run_dir()} was trained with {_show(saved[name])}; "
                             "evaluation uses the run's own value (drop the flag)")
    check_day(saved, cfg.test_day, cfg.allow_train_day, "--test_day")
    resolve_device(cfg.device)


def _flag_name(name: str) -> str:
    """The first (our) flag name of a RunConfig field."""
    f = next(f for f in dataclasses.fields(RunConfig) if f.name == name)
    return f.metadata["flags"][0] if f.metadata.get("flags") else f"--{name}"


def _show(v: Any) -> str:
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
