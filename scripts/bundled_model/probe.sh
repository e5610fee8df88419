#!/usr/bin/env bash
# One short probe of the bundled model's recipe (docs/model-card.md, "Probes"): fine-tune the
# model in INIT (default: the bundled one; the model card's probes started from lite-v2:
# INIT=lite-v2.pth, see train_v3.sh for getting it) for 400 steps (probe.yaml) with the given
# data folders and `hovernet train` options, then score it on the validation images (score.sh
# with SPLIT=valid) and print one line of figures.
#   bash scripts/bundled_model/probe.sh WORK NAME "DATA_FOLDERS" [train options]
# WORK holds ft_patches/ (finetune.sh's extraction, plus ft_patches/crchisto from
# extract_points.sh). On CPUs without native bf16 add --precision fp32. Resumable: rerun it.
set -euo pipefail
WORK=${1:?work folder}; NAME=${2:?probe name}; DATA=${3:?data folders, e.g. "monuseg consep dsb"}
shift 3
HERE=$(cd "$(dirname "$0")" && pwd); SHARED=${SHARED:-$HERE/../../../shared/data}
PY=${PYTHON:-python}
export NO_ALBUMENTATIONS_UPDATE=1
ARGS=(); for d in $DATA; do ARGS+=(--data "$WORK/ft_patches/$d"); done
RUN=$WORK/probes/$NAME
if [ ! -f "$RUN/done" ]; then
  RESUME=(); [ -f "$RUN/run/last.pth" ] && RESUME=(--resume)
  $PY -m hovernet train "${ARGS[@]}" --out "$RUN/run" --config "$HERE/probe.yaml" \
      --init "${INIT:-bundled}" --device cpu "${RESUME[@]}" "$@"
  touch "$RUN/done"
fi
SPLIT=valid bash "$HERE/score.sh" "$SHARED" "$RUN/score" "$RUN/run/last.pth" > "$RUN/score.log" 2>&1
$PY "$HERE/probe_line.py" "$NAME" "$RUN/score"
