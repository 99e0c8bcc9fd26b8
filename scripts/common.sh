# Sourced by the launchers: resolves REPO, PY, DATA_DIR, RUNS_ROOT, DEVICE, RUN_IDS.
# With no RecFlow days under DATA_DIR, the synthetic preset SYNTH_PRESET (default small) is
# generated into SYNTH_DIR (default <repo>/data/synthetic/<preset>) and used instead, loudly.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
cd "$REPO"
DATA_DIR=${DATA_DIR:-$REPO/data}
DEVICE=${DEVICE:-auto}
RUN_IDS=${RUN_IDS:-"30 31 32 33 34"}
if compgen -G "$DATA_DIR/all_stage/*.feather" > /dev/null || compgen -G "$DATA_DIR/all_stage/*.parquet" > /dev/null; then
  RUNS_ROOT=${RUNS_ROOT:-$REPO/runs/recflow}
  # every file the run needs, before anything is converted (seconds; once per launcher chain)
  if [ "${LCRON_DATA_CHECKED:-}" != "$DATA_DIR" ]; then
    "$PY" -m deep_components.data --root "$DATA_DIR" --check > /dev/null || exit 2
    export LCRON_DATA_CHECKED=$DATA_DIR
  fi
else
  PRESET=${SYNTH_PRESET:-small}
  SYNTH_DIR=${SYNTH_DIR:-$REPO/data/synthetic/$PRESET}
  if [ -z "${LCRON_SYNTH_ANNOUNCED:-}" ]; then
    echo "=================================================================================="
    echo " No RecFlow data under $DATA_DIR: using the SYNTHETIC '$PRESET' dataset at"
    echo " $SYNTH_DIR. Results are on SIMULATED data, not RecFlow; they say nothing about"
    echo " the paper's numbers. Set DATA_DIR to a RecFlow download to reproduce the paper."
    echo "=================================================================================="
  fi
  if [ ! -f "$SYNTH_DIR/SYNTHETIC.json" ]; then
    "$PY" -m deep_components.data.synthetic --out "$SYNTH_DIR" --preset "$PRESET" --quiet
  fi
  DATA_DIR=$SYNTH_DIR
  RUNS_ROOT=${RUNS_ROOT:-$REPO/runs/synthetic-$PRESET}
fi
export DATA_DIR RUNS_ROOT DEVICE RUN_IDS
