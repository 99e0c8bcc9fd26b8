#!/usr/bin/env bash
# rankflow on the two-stage cascade: five runs (ids 30-34), each trained then tested, then the table.
# Environment: DATA_DIR, RUNS_ROOT, DEVICE, RUN_IDS (see scripts/launch.sh). Extra flags go to training.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../scripts/launch.sh" two_stage rankflow "$@"
