#!/usr/bin/env bash
# lite-v3 from lite-v2 on the 2-core CPU machine (docs/model-card.md): the fine-tuning data of
# lite-v2 (finetune.sh) plus CRCHisto's points without its "others" (extract_points.sh, type
# branch only), v3.yaml.
#   bash scripts/bundled_model/train_v3.sh SHARED_DATA WORK_DIR LITE_V2.pth [extra train options]
# LITE_V2.pth: hovernet/weights/lite-v2.pth, or once it has left the package
#   git show f834cae:hovernet/weights/lite-v2.pth > lite-v2.pth
# The long run: start it in the background, e.g.
#   nohup bash scripts/bundled_model/train_v3.sh ../shared/data work lite-v2.pth --time-limit 100 > v3.log 2>&1 &
# and rerun the same command after a stop (or a spent --time-limit): it resumes the run in
# WORK_DIR/v3run. When its 12 epochs are done, the last state is re-saved without optimiser
# state as WORK_DIR/lite-v3.pth. A resumed run keeps its config.yaml; options after the third
# argument (e.g. --time-limit) are given to every call and override it.
# RUN_NAME / OUT_NAME (default v3run / lite-v3.pth) name the run folder and the weights in
# WORK_DIR: train_v4.sh runs this recipe again from lite-v3 under v4run / lite-v4.pth.
set -euo pipefail
SHARED=${1:?shared data folder}; WORK=${2:?work folder}; INIT=${3:?lite-v2 checkpoint}; shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python}
export NO_ALBUMENTATIONS_UPDATE=1 PYTHON=$PY
P=$WORK/ft_patches; RUN=$WORK/${RUN_NAME:-v3run}
[ -d "$WORK/resampled" ] || $PY "$HERE/prepare_data.py" "$SHARED" "$WORK/resampled"
[ -d "$P/consep" ] || bash "$HERE/extract.sh" "$WORK/resampled" "$P" 112
# CRCHisto's "others" left out: with them the model called most nuclei of unfamiliar tissue
# "other" (docs/model-card.md, "lite-v3")
[ -d "$P/crchisto_noother" ] || POINT_CLASSES=fibroblast=spindle-shaped,others=- \
    bash "$HERE/extract_points.sh" "$SHARED" "$P" "$WORK/resampled/consep/type_info.json" crchisto_noother
if [ -f "$RUN/last.pth" ]; then
  $PY -m hovernet train --out "$RUN" --resume "$@"
else
  $PY -m hovernet train --data "$P/monuseg" --data "$P/consep" --data "$P/dsb" \
      --data "$P/crchisto_noother" --out "$RUN" --config "$HERE/v3.yaml" --init "$INIT" --device cpu "$@"
fi
$PY - "$RUN" "$WORK/${OUT_NAME:-lite-v3.pth}" <<'PYEOF'
import json, sys
from pathlib import Path
from hovernet.model.checkpoints import load_model, save_checkpoint
run, out = Path(sys.argv[1]), sys.argv[2]
lines = (run / "metrics.jsonl").read_text().splitlines()
if not lines or json.loads(lines[-1])["epoch"] < 12:
    sys.exit(f"{run}: not finished yet (rerun this script to resume)")
model = load_model(run / "last.pth")
save_checkpoint(out, model, type_info=model.meta.type_info, mpp=model.meta.mpp)
print("wrote", out)
PYEOF
