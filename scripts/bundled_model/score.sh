#!/usr/bin/env bash
# Scores of a model as in docs/model-card.md, with `hovernet infer` + `hovernet stats` at each data
# set's native resolution (0.25 um/px; the model's 0.5 um/px is reached by --input_mpp).
#   bash scripts/bundled_model/score.sh SHARED_DATA OUT_DIR [CHECKPOINT]   (default: bundled)
# SPLIT=test (default): the 14 MoNuSeg test images and the CoNSeP test patches.
# INFER_OPTS / TILE_OPTS: extra options before / after `tile` (e.g. INFER_OPTS="--precision bf16
#   --backend torch", TILE_OPTS="--phases 2"), to score inference variants.
# SPLIT=valid: the images the training runs held out for validation (extract-patches, seed 0,
#   --valid-fraction 0.2): 3 MoNuSeg training images and the 80 CoNSeP training crops of tiles
#   12, 14, 19, 22 and 25 (validation.json). Every choice made for the bundled model was made on
#   these.
set -euo pipefail
SHARED=${1:?shared data folder}; OUT=${2:?output folder}; CKPT=${3:-}
SPLIT=${SPLIT:-test}
PY=${PYTHON:-python}
MODEL=(); [ -n "$CKPT" ] && MODEL=(--model_path "$CKPT")
read -r -a INFER_EXTRA <<< "${INFER_OPTS:-}"; read -r -a TILE_EXTRA <<< "${TILE_OPTS:-}"
mkdir -p "$OUT/monuseg_$SPLIT" "$OUT/consep_$SPLIT"
HERE=$(cd "$(dirname "$0")" && pwd)
$PY - "$SHARED" "$OUT" "$SPLIT" "$HERE/validation.json" <<'PYEOF'
import json, os, sys
from pathlib import Path
shared, out, split = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
valid = json.loads(Path(sys.argv[4]).read_text())
monuseg = json.load(open(shared / "monuseg/split.json"))["test"] if split == "test" else valid["monuseg"]
links = [(shared / f"monuseg/images/{n}.png", out / f"monuseg_{split}/{n}.png") for n in monuseg]
if split == "valid":
    tiles = set(valid["consep_tiles"])
    for src in sorted((shared / "consep_train_patches/images").glob("*.jpg")):
        if src.stem.rsplit("_", 1)[0] in tiles:
            links.append((src, out / f"consep_valid/{src.name}"))
for src, link in links:
    if not link.exists():
        os.symlink(src.resolve(), link)
PYEOF
if [ "$SPLIT" = test ]; then CONSEP_IN=$SHARED/consep_patches/images; CONSEP=$SHARED/consep_patches
else CONSEP_IN=$OUT/consep_valid; CONSEP=$SHARED/consep_train_patches; fi
$PY -m hovernet infer "${MODEL[@]}" --device cpu "${INFER_EXTRA[@]}" tile "${TILE_EXTRA[@]}" \
    --input_dir "$OUT/monuseg_$SPLIT" \
    --input_mpp 0.25 --output_dir "$OUT/pred_monuseg_$SPLIT" --quiet
$PY -m hovernet stats --mode instance --pred_dir "$OUT/pred_monuseg_$SPLIT/mat" \
    --true_dir "$SHARED/monuseg/labels" --out "$OUT/monuseg_${SPLIT}_instance.json" \
    --allow-unmatched --quiet
$PY -m hovernet infer "${MODEL[@]}" --device cpu "${INFER_EXTRA[@]}" tile "${TILE_EXTRA[@]}" \
    --input_dir "$CONSEP_IN" \
    --input_mpp 0.25 --output_dir "$OUT/pred_consep_$SPLIT" --quiet
$PY -m hovernet stats --mode instance --pred_dir "$OUT/pred_consep_$SPLIT/mat" \
    --true_dir "$CONSEP/labels" --out "$OUT/consep_${SPLIT}_instance.json" --quiet
$PY -m hovernet stats --mode type --pred_dir "$OUT/pred_consep_$SPLIT/json" \
    --true_dir "$CONSEP/labels" --out "$OUT/consep_${SPLIT}_type.json" --mpp 0.25 --radius 3 \
    --quiet
# where CoNSeP's PQ is lost: each error's cause, recall by nucleus size, border and type
$PY -m hovernet stats --mode errors --pred_dir "$OUT/pred_consep_$SPLIT/mat" \
    --true_dir "$CONSEP/labels" --out "$OUT/consep_${SPLIT}_errors.json" --mpp 0.25 \
    --type-ids 1,2,3,4 --quiet
