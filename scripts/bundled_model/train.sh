#!/usr/bin/env bash
# The bundled model, from the public data in ../shared/data to a checkpoint (docs/model-card.md).
#   bash scripts/bundled_model/train.sh SHARED_DATA WORK_DIR [extra `hovernet train` options]
# Steps: resample to 0.5 um/px (prepare_data.py), cut 364-px windows every 224 px
# (extract-patches), train `lite` with lite.yaml. The published weights were trained on one
# H200 GPU with `--time-limit 4.5 --device cuda --workers 14`.
set -euo pipefail
SHARED=${1:?shared data folder}; WORK=${2:?work folder}; shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
$PY "$HERE/prepare_data.py" "$SHARED" "$WORK/resampled"
B=$WORK/resampled; P=$WORK/patches
bash "$HERE/extract.sh" "$B" "$P"
$PY -m hovernet train --data $P/monuseg --data $P/consep --data $P/dsb --out $WORK/run \
    --config "$HERE/lite.yaml" "$@"
