#!/usr/bin/env bash
# Training windows of the bundled model: 364 px every 224 px (MoNuSeg: every MONUSEG_STEP px).
#   bash scripts/bundled_model/extract.sh RESAMPLED_DIR PATCH_DIR [MONUSEG_STEP]
# VALID_FRACTION (default 0.2, extract-patches' own): the share of source images held out for
# validation; 0 puts every image in the training split.
set -euo pipefail
B=${1:?resampled data (prepare_data.py)}; P=${2:?patch folder}; STEP=${3:-224}
PY=${PYTHON:-python}
V=(--valid-fraction "${VALID_FRACTION:-0.2}")
$PY -m hovernet extract-patches --images $B/monuseg/images --annotations $B/monuseg/labels \
    --out $P/monuseg --window 364 --step $STEP --quiet "${V[@]}"
$PY -m hovernet extract-patches --images $B/dsb/images --annotations $B/dsb/labels \
    --out $P/dsb --window 364 --step 224 --quiet "${V[@]}"
$PY -m hovernet extract-patches --images $B/consep/images --annotations $B/consep/labels \
    --format inst --type-info $B/consep/type_info.json --out $P/consep --window 364 --step 224 \
    --quiet "${V[@]}"
