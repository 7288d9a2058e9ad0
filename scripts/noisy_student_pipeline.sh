#!/usr/bin/env bash
# Noisy Student's iterations, chained by workdir (Xie et al. 2020, Algorithm 1):
#   iteration 0 -> WORKDIR/iteration0  (the teacher: label-only, configs/supervised_fmnist.py's recipe)
#   iteration k -> WORKDIR/iterationk  (a noised student of iteration k-1's pseudo-labels;
#                                       it becomes iteration k+1's teacher)
# Usage: scripts/noisy_student_pipeline.sh WORKDIR [ITERATIONS] [VARIANTS] [CONFIG_FILE]
#   scripts/noisy_student_pipeline.sh /tmp/noisy                  # iterations 0 -> 1 -> 2
#   scripts/noisy_student_pipeline.sh /tmp/noisy_smoke 1 runlocal # 0 -> 1, a few steps each
#   scripts/noisy_student_pipeline.sh /tmp/noisy 3 labels=40,growth=2
# ITERATIONS (default 2) is the last student's iteration. VARIANTS are appended to every
# iteration's config (e.g. labels=40). An iteration whose results.json exists is
# skipped, so a rerun resumes an interrupted pipeline.
# PYTHON selects the interpreter (default: the repo's .venv if present, else python).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workdir="$1"
iterations="${2:-2}"
variants="${3:-}"
config_file="${4:-configs/noisy_student_fmnist.py}"
if ! [[ "$iterations" =~ ^[0-9]+$ ]]; then
  echo "ITERATIONS=$iterations must be a non-negative integer (the last student's iteration)." >&2
  exit 2
fi
default_python=python
[[ -x "$root/.venv/bin/python" ]] && default_python="$root/.venv/bin/python"
python="${PYTHON:-$default_python}"
cd "$root"

for ((k = 0; k <= iterations; k++)); do
  out="$workdir/iteration$k"
  if [[ -e "$out/results.json" ]]; then
    echo "== iteration $k: $out/results.json exists, skipping"
    continue
  fi
  teacher=()
  (( k > 0 )) && teacher=(--config.method.teacher_workdir="$workdir/iteration$((k - 1))")
  echo "== iteration $k -> $out"
  TF_CPP_MIN_LOG_LEVEL=2 "$python" experiments/main.py \
    --config="$config_file:iteration=$k${variants:+,$variants}" \
    --workdir="$out" "${teacher[@]}"
done
