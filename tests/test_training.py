"""End to end on tiny synthetic data: training beats untrained models, run folders, re-test,
collector, entry points and a launcher."""
from __future__ import annotations

import json

import pytest
import torch

from deep_components.specs import get_spec
from deep_components.config import RunConfig
from deep_components.data import load_day, read_id_counts
from deep_components.scoring import evaluate
from deep_components.loss import method_order
from deep_components.process import seed_everything
from deep_components.evaluation import evaluate_run
from deep_components.models import build_models
from deep_components.training import train
import math
from deep_components.run_folder import RunFolder
from deep_components.training import Trainer

TEST_DAY = "2024-01-16"


def _cfg(root, runs, setting, method, run_id=None, batch_size=32, **kw):
    run_id = RUN_ID if run_id is None else run_id
    return RunConfig(setting=setting, method=method, run_id=run_id, batch_size=batch_size,
                     data_dir=str(root), runs_root=str(runs), progress=False, device="cpu", **kw)


def _untrained(root, setting, seed):
    spec = get_spec(setting)
    seed_everything(seed)  # the trainer initialises its towers from the same seed
    models = build_models(spec, read_id_counts(root), seed=seed)  # full tables: same init rows
    return evaluate(models, load_day(root, TEST_DAY, spec), spec, torch.device("cpu"))


#: ICC learns slowest (it is also the weakest method in the paper), and float-rounding changes
#: anywhere in the towers reshuffle which run id lands where: two-stage, in the 27 steps of batch
#: 32, its gain over run ids 1..8 ranges from -0.01 to 0.07, so it trains with batch 16 there
#: (54 steps: 0.03-0.11, mean 0.08); three-stage, batch 32 gives 0.04-0.09 (mean 0.06).  Its
#: margin is checked on the mean gain of three run ids (ICC_RUN_IDS).  RankFlow's three-stage
#: distillation gains 0.12-0.19 over run ids 1..8, hence its lower margin.
#: ICC's loss barely moves in these few steps: on the same five first-day batches, the trained
#: towers' loss is 0.3416 / 0.3224 / 0.3294 against the untrained 0.3378 / 0.3385 / 0.3373 (run ids
#: 3, 4, 5, two-stage) and 0.3369 / 0.3434 / 0.3468 against 0.3383 / 0.3409 / 0.3429 three-stage,
#: so the log's first-five-against-last-five comparison only measures which batches came last
#: (and flips with the CPU's rounding); its loss is not checked, its metric gain is.
MARGIN = {"icc": 0.04, "rankflow": 0.10}
BATCH = {("icc", "two_stage"): 16}
RUN_ID = 3
ICC_RUN_IDS = (3, 4, 5)
METHODS = method_order()            # every registered method


@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
@pytest.mark.parametrize("method", METHODS)
def test_training_beats_untrained(tiny_root, tmp_path, setting, method):
    cfg = _cfg(tiny_root, tmp_path, setting, method, batch_size=BATCH.get((method, setting), 32))
    run_dir = train(cfg)
    for f in ("config.json", "env.json", "loss_log.jsonl", "towers.pt", "train_summary.json"):
        assert (run_dir / f).is_file(), f
    m = evaluate_run(cfg)
    gains = [m["joint_recall"] - _untrained(tiny_root, setting, cfg.resolved_seed())["joint_recall"]]
    if method == "icc":
        for rid in ICC_RUN_IDS[1:]:
            other = _cfg(tiny_root, tmp_path, setting, method, run_id=rid, batch_size=cfg.batch_size)
            train(other)
            gains.append(evaluate_run(other)["joint_recall"]
                         - _untrained(tiny_root, setting, other.resolved_seed())["joint_recall"])
    assert sum(gains) / len(gains) >= MARGIN.get(method, 0.15), gains
    assert m["joint_recall"] < 0.99
    spec = get_spec(setting)
    assert list(m["stages"]) == list(spec.stage_names) and m["requests"] == 300
    for st in spec.stages:
        s = m["stages"][st.name]
        assert s["quota"] == st.quota and 0 < s["ndcg"] < 1 and -1 <= s["kendall"] <= 1
    log = [json.loads(line) for line in open(run_dir / "loss_log.jsonl")]
    assert len(log) == 3 * (300 // cfg.batch_size) and log[-1]["step"] == len(log)
    first, last = sum(r["loss"] for r in log[:5]), sum(r["loss"] for r in log[-5:])
    if method != "icc":      # ICC: see the note above MARGIN; its gain is checked above
        assert last < first
    if method == "lcron":
        assert {"e2e", f"single/{spec.stage_names[0]}"} <= set(log[0])
    cfg_saved = json.loads((run_dir / "config.json").read_text())
    assert cfg_saved["train_days"] == ["2024-01-13", "2024-01-14", "2024-01-15"]
    assert cfg_saved["synthetic"]["preset"] == "tiny"


def test_seeded_runs_repeat_and_retest_is_exact(tiny_root, tmp_path):
    results = {}
    for name, run_id in (("a", 7), ("b", 7), ("c", 8)):
        cfg = _cfg(tiny_root, tmp_path / name, "two_stage", "lcron", run_id=run_id)
        train(cfg)
        results[name] = evaluate_run(cfg)
    a, b, c = results["a"], results["b"], results["c"]
    assert a["joint_recall"] == b["joint_recall"] and a["stages"] == b["stages"]
    again = evaluate_run(_cfg(tiny_root, tmp_path / "a", "two_stage", "lcron", run_id=7))  # no retraining
    assert again["joint_recall"] == a["joint_recall"] and again["stages"] == a["stages"]
    assert c["joint_recall"] != a["joint_recall"]          # another run id is another seed


def _run_cfg(root, run_dir, **kw):
    """A run folder's config (batch 32, CPU)."""
    return RunConfig(**({"data_dir": str(root), "run_dir": str(run_dir), "batch_size": 32,
                         "progress": False, "device": "cpu"} | kw))


@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
@pytest.mark.parametrize("method", ["lcron", "fs_ranknet", "rankflow", "arf_v2"])
def test_one_host_read_per_training_step(tiny_root, tmp_path, monkeypatch, setting, method):
    """At the default --print_freq, a training step reads the device once: its finite flag
    (the loss values come along with it every print_freq steps and at the day's end)."""
    from deep_components.syncs import host_reads

    counts = []
    real = Trainer.train_day

    def counted(self, *a, **k):
        with host_reads() as c:
            out = real(self, *a, **k)
        counts.append(c)
        return out

    monkeypatch.setattr(Trainer, "train_day", counted)
    run = train(_run_cfg(tiny_root, tmp_path / "run", setting=setting, method=method))
    steps = RunFolder(run).summary()["steps"]
    assert steps == 27 and sum(c.count for c in counts) == steps, [c.where for c in counts]
    assert len(RunFolder(run).read_loss_log()) == steps


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("setting", ["two_stage", "three_stage"])
def test_mixed_precision_trains_with_fp32_losses(tiny_root, tmp_path, monkeypatch, precision, setting):
    from deep_components.loss.lcron import LCRONLoss

    dtypes = []
    real = LCRONLoss.compute

    def spy(self, logits, labels, mask):
        out = real(self, logits, labels, mask)
        dtypes.append({s.dtype for s in logits} | {labels.dtype, out["e2e"].dtype, out["loss"].dtype})
        return out

    monkeypatch.setattr(LCRONLoss, "compute", spy)
    run = train(_run_cfg(tiny_root, tmp_path / precision, setting=setting, precision=precision))
    log = RunFolder(run).read_loss_log()
    assert len(log) == 27 and all(math.isfinite(r["loss"]) and math.isfinite(r["e2e"]) for r in log)
    assert dtypes and all(d == {torch.float32} for d in dtypes)
    assert log[-1]["loss"] < log[0]["loss"]
    base = RunFolder(train(_run_cfg(tiny_root, tmp_path / "fp32", setting=setting))).read_loss_log()
    assert base[0]["loss"] == pytest.approx(log[0]["loss"], rel=2e-2)    # the same model, rounded
    assert base[-1]["loss"] != log[-1]["loss"]
    ckpt = RunFolder(run).load_checkpoint()
    assert ckpt["meta"]["precision"] == precision and (("scaler" in ckpt) == (precision == "fp16"))
