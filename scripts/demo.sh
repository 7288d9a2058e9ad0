#!/usr/bin/env bash
# README command 1: set up, then train FixMatch and the label-only baseline on the
# same 40-label split of real Fashion-MNIST and print both top-1 numbers and the gain.
# Step budgets: DEMO_FIXMATCH_STEPS / DEMO_SUPERVISED_STEPS (empty: the config's own);
# the defaults (1000 / 1000) aim at 15 minutes on 2 CPU cores (alone, FixMatch runs
# ~1.5 steps/s and label-only ~7 steps/s there; timed: 12 min 25 s, README).
# Extra arguments go to both runs of experiments/main.py (e.g. --config.seed=1);
# WORKDIR=<dir> picks the workdir (a rerun with the same one resumes / reuses it).
set -euo pipefail
DEMO_FIXMATCH_STEPS="${DEMO_FIXMATCH_STEPS-1000}"
DEMO_SUPERVISED_STEPS="${DEMO_SUPERVISED_STEPS-1000}"
DEMO_LABELS="${DEMO_LABELS:-40}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
workdir="${WORKDIR:-$root/workdirs/demo_$(date +%Y%m%d_%H%M%S)}"
cd "$root"

train() {  # train NAME CONFIG STEPS [ARGS...]
  local name="$1" config="$2" steps="$3"
  shift 3
  local extra=()
  [ -n "$steps" ] && extra+=("--config.num_train_steps=$steps")
  echo "== $name: $config ${extra[*]-}; workdir=$workdir/$name"
  TF_CPP_MIN_LOG_LEVEL=2 "$root/.venv/bin/python" experiments/main.py --config="$config" \
    --workdir="$workdir/$name" --alsologtostderr ${extra[@]+"${extra[@]}"} "$@"
}

train supervised "configs/supervised_fmnist.py:labels=$DEMO_LABELS" "$DEMO_SUPERVISED_STEPS" "$@"
train fixmatch "configs/fixmatch_fmnist.py:labels=$DEMO_LABELS" "$DEMO_FIXMATCH_STEPS" "$@"
echo "== result"
"$root/.venv/bin/python" experiments/compare.py "FixMatch $DEMO_LABELS labels" \
  "$workdir/fixmatch" "label-only" "$workdir/supervised"
