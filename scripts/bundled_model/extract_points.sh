#!/usr/bin/env bash
# CRCHisto's classified nucleus centres as point patches for the type branch (docs/training-data.md,
# "Point annotations"): its 500 x 500 images are 20x, the bundled model's resolution, so they are
# cut as they are, 364-px windows every 224 px, the source's train split for training and its
# valid + test images for validation. fibroblast -> spindle-shaped, others -> other.
#   bash scripts/bundled_model/extract_points.sh SHARED_DATA PATCH_DIR TYPE_INFO_JSON [NAME]
# POINT_CLASSES: the class mapping (default fibroblast=spindle-shaped,others=other); lite-v3
# drops "others" (others=-: those nuclei get no type target), NAME crchisto_noother (default
# crchisto), see docs/model-card.md.
# TYPE_INFO_JSON: the 4-class merge, e.g. WORK/resampled/consep/type_info.json (prepare_data.py).
# CRCHisto is released for research use only: weights trained on it are for research use only.
set -euo pipefail
SHARED=${1:?shared data folder}; P=${2:?patch folder}; TI=${3:?type_info.json}; NAME=${4:-crchisto}
PY=${PYTHON:-python}
export NO_ALBUMENTATIONS_UPDATE=1
$PY -m hovernet extract-patches --images "$SHARED/crchisto/images" \
    --annotations "$SHARED/crchisto/points" --type-info "$TI" --point-base 1 \
    --point-classes "${POINT_CLASSES:-fibroblast=spindle-shaped,others=other}" \
    --split-file "$SHARED/crchisto/split.json" --out "$P/$NAME" --window 364 --step 224 --quiet
