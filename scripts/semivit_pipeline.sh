#!/usr/bin/env bash
# Semi-ViT's pipeline (Cai et al. 2022): [self-supervised init ->] supervised fine-tune
# -> semi-supervised fine-tune (EMA-Teacher + probabilistic pseudo mixup), chained by
# config.init_from (every variable whose path and shape match is copied).
#
#   ROOT=/tmp/semivit LABELS=10pct [PRETRAINED=<workdir with a ViT-B backbone>] \
#     scripts/semivit_pipeline.sh [extra variant, e.g. runlocal]
#
# PRETRAINED from MAE's ViT-B/16 weights:
#   python experiments/convert_weights.py --from=timm_vit \
#     --checkpoint=mae_pretrain_vit_base.pth --workdir=/tmp/mae_vitb
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-/tmp/semivit}
LABELS=${LABELS:-10pct}
EXTRA=${1:+,$1}
PRETRAINED=${PRETRAINED:+,init_from=$PRETRAINED}

python experiments/main.py \
  --config="configs/semivit_vitb.py:stage=supervised,labels=${LABELS}${PRETRAINED}${EXTRA}" \
  --workdir="$ROOT/supervised"
python experiments/main.py \
  --config="configs/semivit_vitb.py:stage=semi,labels=${LABELS},init_from=$ROOT/supervised${EXTRA}" \
  --workdir="$ROOT/semi"
