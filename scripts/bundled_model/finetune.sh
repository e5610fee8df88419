#!/usr/bin/env bash
# lite-v2 from lite-v1 on the 2-core CPU machine (docs/model-card.md): fine-tuning with
# finetune.yaml, MoNuSeg windows cut every 112 px (about half of the draws), then the run's last
# state re-saved without optimiser state as the shipped checkpoint.
#   bash scripts/bundled_model/finetune.sh SHARED_DATA WORK_DIR LITE_V1.pth [extra train options]
# lite-v1.pth: git show 0538159:hovernet/weights/lite-v1.pth > lite-v1.pth
# OUT_NAME (default lite-v2): the name of the re-saved checkpoint. VALID_FRACTION (extract.sh)
# and options after the third argument (e.g. --lr 1e-4 --epochs 4 --ema 0.995 --seed 2) vary the
# run; the model card lists the variants tried from lite-v2 and what they scored.
# Resumable: rerun `hovernet train --out WORK_DIR/run --resume` after a stop.
set -euo pipefail
SHARED=${1:?shared data folder}; WORK=${2:?work folder}; INIT=${3:?lite-v1 checkpoint}; shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
export NO_ALBUMENTATIONS_UPDATE=1
[ -d "$WORK/resampled" ] || $PY "$HERE/prepare_data.py" "$SHARED" "$WORK/resampled"
B=$WORK/resampled; P=$WORK/ft_patches
bash "$HERE/extract.sh" "$B" "$P" 112
$PY -m hovernet train --data $P/monuseg --data $P/consep --data $P/dsb --out $WORK/run \
    --config "$HERE/finetune.yaml" --init "$INIT" --device cpu "$@"
$PY - "$WORK/run/last.pth" "$WORK/${OUT_NAME:-lite-v2}.pth" <<'PYEOF'
import sys
from hovernet.model.checkpoints import load_model, save_checkpoint
model = load_model(sys.argv[1])
save_checkpoint(sys.argv[2], model, type_info=model.meta.type_info, mpp=model.meta.mpp)
print("wrote", sys.argv[2])
PYEOF
