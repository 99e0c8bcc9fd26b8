"""The benchmarks that a test can keep from rotting: the device the throughput bench times, the CPU half of the device check."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import REPO


def test_the_throughput_bench_times_its_own_device():
    src = (REPO / "bench" / "throughput.py").read_text()
    assert "torch.cuda.synchronize(device)" in src and "reset_peak_memory_stats(device)" in src
    assert "synchronize()" not in src.replace("synchronize(device)", "")


def test_gpu_check_cpu_half(tmp_path):
    out = tmp_path / "report.md"
    r = subprocess.run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick",
                        "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO,
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    md = out.read_text()
    for section in ("## Entry points", "## Parity", "## Throughput", "## Host reads per step"):
        assert section in md, section
    rows = [x for x in md.splitlines() if x.startswith("| ") and ("| ok |" in x or "| FAILED |" in x)]
    assert len(rows) >= 9 and all("| ok |" in x for x in rows), "\n".join(rows)
    parity = next(x for x in md.splitlines() if x.startswith("| max abs difference"))
    assert float(parity.split("|")[2]) == 0.0            # cpu against cpu: identical
    reads = [x for x in md.splitlines() if x.startswith("| host reads per step")]
    assert reads and all(float(x.split("|")[2]) <= 1.0 for x in reads)


def test_icc_zones_by_hand():
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("icc_zones", REPO / "bench" / "icc_zones.py")
    iz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(iz)
    s1 = np.array([[4.0, 3, 2, 1], [4.0, 3, 2, 1]])
    s2 = np.array([[1.0, 2, 3, 4], [4.0, 3, 2, 1]])
    mask = np.array([[True] * 4, [True, True, True, False]])
    z = iz.zones([s1, s2], mask, (2, 2))
    # row 0: stage 1 keeps slots 0, 1; stage 2's own top 2 are slots 2, 3, so 0, 1 are dead
    assert z.tolist() == [[1, 1, 0, 0], [2, 2, 0, -1]]
    shares = iz.zone_shares(z, mask, 2, 2)
    assert shares["ground truth"] == [0.0, 0.5, 0.5]
    assert shares["all slots"] == pytest.approx([3 / 7, 2 / 7, 2 / 7])
    s2[1, 1] = -5.0                               # row 1: stage 2's 2nd best valid score is 2
    assert iz.cut_values([s1, s2], mask, (2, 2)) == [3.0, 2.5]
    assert iz.zone_names(("retrieval", "prerank")) == ["cut by retrieval", "dead (kept until prerank)",
                                                      "through"]
