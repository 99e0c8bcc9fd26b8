#!/usr/bin/env bash
# All eight methods on the three-stage cascade (five runs each), one comparison table and a plot.
# Environment: DATA_DIR, RUNS_ROOT, DEVICE, RUN_IDS, METHODS (see scripts/run_all.sh).
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/run_all.sh" three_stage "$@"
