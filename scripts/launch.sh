#!/usr/bin/env bash
# Shared launcher: RUN_IDS runs of one method (train, then test), then the collected table.
#   scripts/launch.sh SETTING METHOD [extra flags for run_train*.py]
# Environment:
#   DATA_DIR      RecFlow folder (default: <repo>/data); without RecFlow days there, the synthetic
#                 SYNTH_PRESET (default small) is generated into SYNTH_DIR and used instead
#   RUNS_ROOT     where run folders go (default <repo>/runs/recflow or <repo>/runs/synthetic-<preset>)
#   DEVICE        auto | cpu | cuda | cuda:N (default auto)
#   RUN_IDS       run ids (default "30 31 32 33 34"); each is also the run's seed
#   TAU           --tau passed to training (default: the paper's per-method value)
#   NPROC         processes per node; > 1 runs training and testing under torchrun (DDP)
#   TORCHRUN_ARGS extra torchrun arguments, e.g. "--nnodes 2 --node_rank 0 --rdzv_backend c10d
#                 --rdzv_endpoint host0:29500" for several machines (default: --standalone)
set -euo pipefail
SETTING=$1; METHOD=$2; shift 2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
case $SETTING in two_stage) N=2 ;; three_stage) N=3 ;; *) echo "unknown setting $SETTING" >&2; exit 2 ;; esac
case $METHOD in arf|arf_v2) DEFAULT_TAU=200 ;; lcron) DEFAULT_TAU=50 ;; *) DEFAULT_TAU=0 ;; esac
TAU=${TAU:-$DEFAULT_TAU}
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ]; then
  # shellcheck disable=SC2206
  RUN=("$PY" -m torch.distributed.run --nproc_per_node="$NPROC" ${TORCHRUN_ARGS:---standalone})
else
  RUN=("$PY")
fi
for ID in $RUN_IDS; do
  "${RUN[@]}" deep_components/run_train$N.py --loss_type "$METHOD" --epochs "$ID" --tau "$TAU" \
      --data_dir "$DATA_DIR" --runs_root "$RUNS_ROOT" --device "$DEVICE" --overwrite "$@"
  "${RUN[@]}" deep_components/run_test$N.py --loss_type "$METHOD" --epochs "$ID" \
      --data_dir "$DATA_DIR" --runs_root "$RUNS_ROOT" --device "$DEVICE"
done
"$PY" -m deep_components.collect --runs_root "$RUNS_ROOT" --setting "$SETTING" --methods "$METHOD"
