#!/usr/bin/env bash
# SimCLRv2's three stages, chained by workdir (SimCLRv2 Fig. 3):
#   1. pretrain  -> WORKDIR/pretrain
#   2. finetune  -> WORKDIR/finetune  (init_from: the pretrained encoder + projection head)
#   3. distill   -> WORKDIR/distill   (teacher: the fine-tuned run; self-distillation, the
#                                      student starts from the fine-tuned encoder)
# Usage: scripts/simclrv2_pipeline.sh WORKDIR [VARIANTS] [CONFIG_FILE]
#   scripts/simclrv2_pipeline.sh /tmp/simclrv2                   # Fashion-MNIST on CPU
#   scripts/simclrv2_pipeline.sh /tmp/simclrv2_smoke runlocal    # a few steps per stage
#   scripts/simclrv2_pipeline.sh gs://b/simclrv2 labels=10pct,model=r50_1x configs/simclrv2_r50.py
# VARIANTS are appended to every stage's config (e.g. labels=10pct). A stage whose
# results.json exists is skipped, so a rerun resumes an interrupted pipeline. For
# big-to-small distillation run stage 3 by hand with teacher=... and no init_from.
# PYTHON selects the interpreter (default: the repo's .venv if present, else python).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
workdir="$1"
variants="${2:-}"
config_file="${3:-configs/simclrv2_fmnist.py}"
default_python=python
[[ -x "$root/.venv/bin/python" ]] && default_python="$root/.venv/bin/python"
python="${PYTHON:-$default_python}"
cd "$root"

run_stage() {
  local stage="$1"; shift
  if [[ -e "$workdir/$stage/results.json" ]]; then
    echo "== $stage: $workdir/$stage/results.json exists, skipping"
    return
  fi
  echo "== $stage -> $workdir/$stage"
  TF_CPP_MIN_LOG_LEVEL=2 "$python" experiments/main.py \
    --config="$config_file:stage=$stage${variants:+,$variants}" \
    --workdir="$workdir/$stage" "$@"
}

run_stage pretrain
run_stage finetune --config.init_from="$workdir/pretrain"
run_stage distill --config.method.teacher_workdir="$workdir/finetune" \
  --config.init_from="$workdir/finetune"
