#!/usr/bin/env bash
# README command 1: set up, then train + evaluate the default job on real
# Fashion-MNIST with 1% labels, printing progress and the final top-1.
# Any extra arguments go to experiments/main.py (e.g. --config=configs/x.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
workdir="${WORKDIR:-$root/workdirs/demo_$(date +%Y%m%d_%H%M%S)}"
echo "== training; workdir=$workdir"
cd "$root"
TF_CPP_MIN_LOG_LEVEL=2 "$root/.venv/bin/python" experiments/main.py \
  --config="configs/supervised_fmnist.py" --workdir="$workdir" --alsologtostderr "$@"
