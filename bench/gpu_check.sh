#!/usr/bin/env bash
# The device check on a CUDA machine (<= 10 minutes on one GPU): every entry point on the GPU,
# CPU-vs-GPU parity, fp32/bf16 throughput and peak memory, host syncs per step; one Markdown report.
#   bash bench/gpu_check.sh [--device cuda:0] [--out gpu_check.md] [--quick]
# Its CPU half runs in the tests: python bench/gpu_check.py --device cpu --quick
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python}" bench/gpu_check.py --device cuda "$@"
