#!/usr/bin/env bash
# Every method of the paper on one setting (RUN_IDS runs each), then one comparison table
# (Markdown + CSV) and a PNG plot under RUNS_ROOT.   scripts/run_all.sh SETTING [extra flags]
# Environment as scripts/launch.sh, plus METHODS (default: every registered method, the paper's
# in its table order: `python -m deep_components.loss`).
set -euo pipefail
SETTING=$1; shift
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
export LCRON_SYNTH_ANNOUNCED=1
METHODS=${METHODS:-$("$PY" -m deep_components.loss | tr '\n' ' ')}
TIMES=()
for M in $METHODS; do
  echo "---- $SETTING / $M ----"
  T0=$SECONDS
  bash "$REPO/scripts/launch.sh" "$SETTING" "$M" "$@"
  TIMES+=("$M $((SECONDS - T0))s")
done
echo "wall time per method (all runs, train + test): ${TIMES[*]}"
"$PY" -m deep_components.collect --runs_root "$RUNS_ROOT" --setting "$SETTING" --methods $METHODS --plot
