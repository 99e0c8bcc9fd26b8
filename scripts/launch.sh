#!/usr/bin/env bash
# Shared launcher: RUN_IDS runs of one method (train, then test), then the collected table.
#   scripts/launch.sh SETTING METHOD [extra training flags]
# SETTING is any registered cascade (two_stage, three_stage, four_stage, ...: see
# `python -m deep_components.train --help`); METHOD any registered method
# (`python -m deep_components.loss`).
# Environment:
#   DATA_DIR      RecFlow folder (default: <repo>/data); without RecFlow days there, the synthetic
#                 SYNTH_PRESET (default small) is generated into SYNTH_DIR and used instead
#   RUNS_ROOT     where run folders go (default <repo>/runs/recflow or <repo>/runs/synthetic-<preset>)
#   DEVICE        auto | cpu | cuda | cuda:N (default auto)
#   RUN_IDS       run ids (default "30 31 32 33 34"); each is also the run's seed
#   TAU           --tau passed to training (default: the method's own temperature, from its loss)
#   NPROC         processes per node; > 1 runs training and testing under torchrun (DDP)
#   TORCHRUN_ARGS extra torchrun arguments, e.g. "--nnodes 2 --node_rank 0 --rdzv_backend c10d
#                 --rdzv_endpoint host0:29500" for several machines (default: --standalone)
set -euo pipefail
SETTING=$1; METHOD=$2; shift 2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TAU=${TAU:-0}                      # 0 = the method's default
NPROC=${NPROC:-1}
if [ "$NPROC" -gt 1 ]; then
  # shellcheck disable=SC2206
  RUN=("$PY" -m torch.distributed.run --nproc_per_node="$NPROC" ${TORCHRUN_ARGS:---standalone})
else
  RUN=("$PY")
fi
for ID in $RUN_IDS; do
  "${RUN[@]}" -m deep_components.train --setting "$SETTING" --method "$METHOD" --run_id "$ID" \
      --tau "$TAU" --data_dir "$DATA_DIR" --runs_root "$RUNS_ROOT" --device "$DEVICE" --overwrite "$@"
  "${RUN[@]}" -m deep_components.evaluate --setting "$SETTING" --method "$METHOD" --run_id "$ID" \
      --data_dir "$DATA_DIR" --runs_root "$RUNS_ROOT" --device "$DEVICE"
done
"$PY" -m deep_components.collect --runs_root "$RUNS_ROOT" --setting "$SETTING" --methods "$METHOD"
