#!/usr/bin/env bash
# Scores of a model as in docs/model-card.md, with `hovernet infer` + `hovernet stats` at each data
# set's native resolution (0.25 um/px; the model's 0.5 um/px is reached by --input_mpp).
#   bash scripts/bundled_model/score.sh SHARED_DATA OUT_DIR [CHECKPOINT]   (default: bundled)
set -euo pipefail
SHARED=${1:?shared data folder}; OUT=${2:?output folder}; CKPT=${3:-}
PY=${PYTHON:-python}
MODEL=(); [ -n "$CKPT" ] && MODEL=(--model_path "$CKPT")
mkdir -p "$OUT/monuseg_test" "$OUT/consep_test"
# the 14 MoNuSeg test images (split.json "test")
$PY - "$SHARED/monuseg" "$OUT/monuseg_test" <<'PYEOF'
import json, os, sys
src, dst = sys.argv[1], sys.argv[2]
for name in json.load(open(f"{src}/split.json"))["test"]:
    link = f"{dst}/{name}.png"
    if not os.path.exists(link):
        os.symlink(os.path.abspath(f"{src}/images/{name}.png"), link)
PYEOF
$PY -m hovernet infer "${MODEL[@]}" --device cpu tile --input_dir "$OUT/monuseg_test" \
    --input_mpp 0.25 --output_dir "$OUT/pred_monuseg" --quiet
$PY -m hovernet stats --mode instance --pred_dir "$OUT/pred_monuseg/mat" \
    --true_dir "$SHARED/monuseg/labels" --out "$OUT/monuseg_instance.json" --allow-unmatched --quiet
$PY -m hovernet infer "${MODEL[@]}" --device cpu tile --input_dir "$SHARED/consep_patches/images" \
    --input_mpp 0.25 --output_dir "$OUT/pred_consep" --quiet
$PY -m hovernet stats --mode instance --pred_dir "$OUT/pred_consep/mat" \
    --true_dir "$SHARED/consep_patches/labels" --out "$OUT/consep_instance.json" --quiet
$PY -m hovernet stats --mode type --pred_dir "$OUT/pred_consep/json" \
    --true_dir "$SHARED/consep_patches/labels" --out "$OUT/consep_type.json" --mpp 0.25 --radius 3 --quiet
