#!/usr/bin/env bash
# The paper's two-stage LCRON ablations (methods.md §0), each as a tagged variant with RUN_IDS
# runs (default five), then one table with a row per variant (runs/<...>/two_stage_lcron.md).
#   ABLATIONS="terms quota softsort tau fixed" (default: all groups)
# Environment as scripts/launch.sh.  Each variant is also one documented command, e.g.
#   bash two_stage/lcron.sh --loss_opt terms=single --tag single_only
set -euo pipefail
HERE=$(dirname "${BASH_SOURCE[0]}")
ABLATIONS=${ABLATIONS:-"terms quota softsort tau fixed"}
run() { bash "$HERE/lcron.sh" "$@"; }
for group in $ABLATIONS; do
  case $group in
    terms)    run --loss_opt terms=single --tag single_only
              run --loss_opt terms=e2e --tag e2e_only ;;
    quota)    run --loss_opt e2e_k=quota --tag e2e_quota ;;
    softsort) run --sort soft --tag softsort ;;
    tau)      for t in 1 20 100 200 1000; do TAU=$t bash "$HERE/lcron.sh" --tag "tau$t"; done ;;  # 50 = default
    fixed)    for w in 0.01 0.1 0.5 1 5; do run --loss_opt "fixed_weights=$w" --tag "fixed$w"; done ;;
    *) echo "unknown ablation group $group" >&2; exit 2 ;;
  esac
done
