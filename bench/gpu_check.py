"""The device check: every entry point on a device, CPU-against-device parity of the towers,
training and evaluation throughput and peak memory per precision, and the host synchronisations
of a training step; one Markdown report.

    bash bench/gpu_check.sh [--out gpu_check.md]                  # a CUDA machine, <= 10 minutes
    python bench/gpu_check.py --device cpu --quick --out r.md      # its CPU half (tests run it)

Sections:
- **Entry points** on the device (tiny synthetic data): train, ``--resume`` (of a checkpoint
  written on the device, and of one written on the CPU), evaluate, streaming, serve,
  ``four_stage``, ``--emb_optimizer lazy_adam``, ``--precision bf16`` and ``fp16``: status and
  seconds of each command.
- **Parity**: 5 steps of LCRON on the CPU and on the device from the same seed: the largest
  absolute difference of any tower parameter.
- **Throughput** (bench/throughput.py): LCRON and BCE, both settings, fp32 and bf16 on the
  ``small`` preset (``--quick``: LCRON two-stage on tiny, batch 32, 3 steps): training and
  evaluation requests/s, peak device memory.
- **Host reads per step**: a Trainer's day on the device, counting the reads of tensor values
  by this package (deep_components.syncs.host_reads) and, on CUDA, the synchronisations CUDA
  reports (``torch.cuda.set_sync_debug_mode``), per training step.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def sh(cmd: list[str], env: dict, timeout: int = 600) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True,
                           env=env, timeout=timeout)
        rc, tail = r.returncode, (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
    except subprocess.TimeoutExpired:
        rc, tail = 124, ["timed out"]
    return rc, time.perf_counter() - t0, tail[0][:200]


def entry_points(device: str, tiny: Path, work: Path, env: dict) -> list[tuple[str, int, float, str]]:
    """(name, rc, seconds, last line) of every entry point on ``device``."""
    common = ["--data_dir", str(tiny), "--batch_size", "32", "--no_progress"]
    run, cross = work / "run", work / "cross"
    cmds = [
        ("train two_stage lcron", ["deep_components/run_train2.py", *common, "--run_dir", str(run),
                                   "--device", device, "--max_steps", "6", "--ckpt_every", "3"]),
        ("resume on the device", ["deep_components/run_train2.py", *common, "--run_dir", str(run),
                                  "--device", device, "--max_steps", "10", "--resume"]),
        ("train on the CPU", ["deep_components/run_train2.py", *common, "--run_dir", str(cross),
                              "--device", "cpu", "--max_steps", "3"]),
        ("resume the CPU's checkpoint on the device",
         ["deep_components/run_train2.py", *common, "--run_dir", str(cross), "--device", device,
          "--max_steps", "6", "--resume"]),
        ("evaluate", ["deep_components/run_test2.py", "--run_dir", str(run), "--device", device]),
        ("streaming", ["-m", "deep_components.streaming", *common, "--setting", "two_stage",
                       "--device", device, "--methods", "bce", "--first_test_day", "2024-01-16",
                       "--max_steps", "4", "--out_dir", str(work / "streaming")]),
        ("serve", ["-m", "deep_components.serve", "--run_dir", str(run), "--device", device,
                   "--keep", "60", "10", "--max_requests", "64"]),
        ("train four_stage", ["-m", "deep_components.train", *common, "--setting", "four_stage",
                              "--run_dir", str(work / "four"), "--device", device, "--max_steps", "4"]),
        ("train lazy_adam", ["deep_components/run_train3.py", *common, "--run_dir", str(work / "lazy"),
                             "--device", device, "--max_steps", "4", "--emb_optimizer", "lazy_adam"]),
        ("train bf16", ["deep_components/run_train3.py", *common, "--run_dir", str(work / "bf16"),
                        "--device", device, "--max_steps", "4", "--precision", "bf16"]),
        ("train fp16", ["deep_components/run_train3.py", *common, "--run_dir", str(work / "fp16"),
                        "--device", device, "--max_steps", "4", "--precision", "fp16"]),
    ]
    return [(name, *sh(cmd, env)) for name, cmd in cmds]


def parity(device: str, tiny: Path, work: Path, env: dict) -> tuple[float | None, str]:
    """Largest |difference| of the towers after 5 steps on the CPU and on ``device``."""
    import torch

    from deep_components.run_folder import RunFolder

    dirs = {}
    for dev in ("cpu", device):
        d = work / f"parity-{dev.replace(':', '_')}"
        rc, _, tail = sh(["deep_components/run_train2.py", "--data_dir", str(tiny), "--batch_size", "32",
                          "--no_progress", "--run_dir", str(d), "--device", dev, "--max_steps", "5",
                          "--overwrite"], env)
        if rc != 0:
            return None, f"{dev}: {tail}"
        dirs[dev] = d
    a, b = (RunFolder(dirs[k]).load_towers(torch.device("cpu"))[0] for k in ("cpu", device))
    diff = max(float((p - q).abs().max()) for ma, mb in zip(a, b)
               for p, q in zip(ma.state_dict().values(), mb.state_dict().values()))
    return diff, ""


def throughput(device: str, data: Path, quick: bool, env: dict) -> list[dict]:
    rows = []
    for precision in ("fp32", "bf16"):
        out = tempfile.mktemp(suffix=".md")
        cmd = ["bench/throughput.py", "--data_dir", str(data), "--methods", "lcron",
               *([] if quick else ["bce"]), "--device", device, "--precision", precision,
               "--out", out]
        cmd += (["--steps", "3", "--warmup", "1", "--batch_size", "32", "--settings", "two_stage"]
                if quick else ["--steps", "20"])
        r = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, env=env,
                           timeout=900)
        if r.returncode != 0:
            rows.append({"precision": precision, "error": (r.stderr or r.stdout)[-300:]})
            continue
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) > 3 and parts[0] in ("two_stage", "three_stage") and parts[3] == "req/s":
                rows.append({"precision": precision, "setting": parts[0], "method": parts[1],
                             "train": parts[2], "line": line})
        rows.append({"precision": precision, "table": Path(out).read_text()})
    return rows


def host_reads(device_name: str, tiny: Path) -> list[tuple[str, float, int]]:
    """(what, reads per step, steps) of a Trainer's day on the device, per setting."""
    import torch

    from deep_components.specs import get_spec
    from deep_components.config import RunConfig
    from deep_components.data import read_id_counts
    from deep_components.devices import resolve_device
    from deep_components.syncs import cuda_syncs, host_reads as reads
    from deep_components.training import Trainer, prepare_data

    device = resolve_device(device_name)
    out = []
    for setting in ("two_stage", "three_stage"):
        cfg = RunConfig(setting=setting, data_dir=str(tiny), batch_size=32, progress=False,
                        device=device_name)
        spec = get_spec(setting)
        data = prepare_data(cfg, spec, tiny, ["2024-01-13", "2024-01-14"])
        tr = Trainer(cfg, spec, tiny, read_id_counts(tiny), device, 30, data.vocab, data.days)
        tr.train_day("2024-01-13", 0)                      # warm-up (allocator, kernels)
        before = tr.step
        with reads() as c:
            if device.type == "cuda":
                with cuda_syncs() as cs:
                    tr.train_day("2024-01-14", 1)
            else:
                tr.train_day("2024-01-14", 1)
        steps = tr.step - before
        out.append((f"{setting} lcron (this package's reads)", c.count / steps, steps))
        if device.type == "cuda":
            out.append((f"{setting} lcron (CUDA synchronisations)", cs.count / steps, steps))
        del tr
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny data and steps (the CPU half)")
    ap.add_argument("--out", default=None, help="write the report here too")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    a = ap.parse_args(argv)
    import torch

    from deep_components.data.synthetic import generate, preset_params

    t_start = time.perf_counter()
    work = Path(a.work or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny = work / "tiny"
    if not (tiny / "SYNTHETIC.json").is_file():
        generate(tiny, preset_params("tiny"), seed=0, preset="tiny", verbose=False)
    data = tiny
    if not a.quick:
        data = work / "small"
        if not (data / "SYNTHETIC.json").is_file():
            generate(data, preset_params("small"), seed=0, preset="small", verbose=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LCRON_CACHE_DIR": str(work / "cache")}
    md = [f"# Device check: {a.device}", ""]
    dev_name = (torch.cuda.get_device_name(torch.device(a.device)) if a.device.startswith("cuda")
                and torch.cuda.is_available() else "CPU")
    try:
        import faiss

        faiss_kind = "faiss-gpu" if hasattr(faiss, "StandardGpuResources") else "faiss-cpu"
    except ImportError:
        faiss_kind = "no faiss"
    md += [f"torch {torch.__version__} (CUDA {torch.version.cuda}), device {dev_name}, {faiss_kind}",
           ""]

    md += ["## Entry points", "", "| command | status | seconds | last line |", "|---|---|---|---|"]
    for name, rc, sec, tail in entry_points(a.device, tiny, work, env):
        md.append(f"| {name} | {'ok' if rc == 0 else 'FAILED'} | {sec:.1f} | {tail.replace('|', '/')} |")
    print("\n".join(md), flush=True)

    diff, why = parity(a.device, tiny, work, env)
    md += ["", "## Parity", "", "LCRON two-stage, 5 steps of batch 32 from the same seed, CPU "
           f"against {a.device}:", "", "| measure | value |", "|---|---|",
           f"| max abs difference of any tower parameter | {diff if diff is not None else 'n/a'} |"]
    if why:
        md.append(f"| failed | {why} |")

    md += ["", "## Throughput", ""]
    for row in throughput(a.device, data, a.quick, env):
        if "table" in row:
            md += [f"**{row['precision']}**", "", row["table"].strip(), ""]
        elif "error" in row:
            md += [f"**{row['precision']}**: FAILED ({row['error']})", ""]

    md += ["## Host reads per step", "", "| measure | per step | steps |", "|---|---|---|"]
    for what, per_step, steps in host_reads(a.device, tiny):
        md.append(f"| host reads per step: {what} | {per_step:.3f} | {steps} |")
    md += ["", f"(report made in {time.perf_counter() - t_start:.0f} s)"]
    text = "\n".join(md) + "\n"
    print("\n".join(md[md.index("## Parity") - 1:]))        # the entry points are printed above
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
