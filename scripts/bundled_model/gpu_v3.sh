#!/usr/bin/env bash
# The bundled model's recipe on an accelerator machine, for MINUTES, from the data packed by
# gpu_pack.py; the run comes back for the CPU to continue (`--resume`). Issue 26, point 3.
#
# Here (the 2-core machine), once:
#   python scripts/bundled_model/gpu_pack.py pack WORK/resampled ../shared/data .gpu  # 44 MiB
#   cp hovernet/weights/lite-v3.pth .gpu/init.pth   # or grow.py's lite-wide of it (add --arch lite-wide)
# (.gpu must be ignored by git: echo /.gpu/ >> .git/info/exclude). Then one device call:
#   command: bash scripts/bundled_model/gpu_v3.sh .gpu .gpu/init.pth 6 --config scripts/bundled_model/gpu.yaml
#   carry: [".gpu"], timeout_s: 600
# It unpacks the images (lossless WebP -> PNG), cuts the patches as train_v3.sh does (both
# extractions at once), trains for MINUTES (--time-limit: a clean, resumable stop), and writes
# to $OUT: train.log, config.yaml, metrics.jsonl and last.pth in parts of 15 MB (the device
# tool returns files of at most 16 MiB). Back here:
#   mkdir -p WORK/gpurun && cat FILES_AT/last.pth.part-* > WORK/gpurun/last.pth
#   cp FILES_AT/config.yaml FILES_AT/metrics.jsonl WORK/gpurun/
#   python -m hovernet train --out WORK/gpurun --resume --device cpu --workers 1 \
#       --data WORK/ft_patches/monuseg --data WORK/ft_patches/consep --data WORK/ft_patches/dsb \
#       --data WORK/ft_patches/crchisto_noother [--precision fp32 without native bf16]
# (train_v3.sh's extraction of the same data). Extra options after MINUTES go to
# `hovernet train`. DEVICE=cpu and a small MINUTES try the whole path on any machine.
set -uo pipefail
PACK=${1:?packed data (gpu_pack.py)}; INIT=${2:?starting checkpoint}; MIN=${3:?minutes}; shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 PYTHON=${PYTHON:-python3}
PY=$PYTHON
OUT=${OUT:?set OUT, the folder whose files come back}
TMP=${TMPDIR:-/tmp}; D=$TMP/hv_data; P=$TMP/hv_patches; RUN=$TMP/hv_gpurun
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
rm -rf "$D" "$P" "$RUN"
$PY -c "import torch; print('torch', torch.__version__, 'cuda:', torch.cuda.is_available() and torch.cuda.get_device_name())" || exit 1
el "unpack"
$PY "$HERE/gpu_pack.py" unpack "$PACK" "$D" || exit 1
el "extract"
bash "$HERE/extract.sh" "$D/resampled" "$P" 112 > "$OUT/extract.log" 2>&1 &
E1=$!
POINT_CLASSES=fibroblast=spindle-shaped,others=- bash "$HERE/extract_points.sh" "$D/shared" "$P" \
    "$D/resampled/consep/type_info.json" crchisto_noother > "$OUT/extract_points.log" 2>&1 &
E2=$!
wait $E1 && wait $E2 || { tail -5 "$OUT"/extract*.log; exit 1; }
el "train"
CPUS=$(nproc)
$PY -m hovernet train --data "$P/monuseg" --data "$P/consep" --data "$P/dsb" \
    --data "$P/crchisto_noother" --out "$RUN" --init "$INIT" --device "${DEVICE:-cuda}" \
    --workers "${WORKERS:-$(( CPUS > 2 ? CPUS - 2 : 1 ))}" --time-limit "$MIN" "$@" \
    > "$OUT/train.log" 2>&1
echo "train exit $?"; tail -4 "$OUT/train.log"
el "pack"
cp "$RUN/config.yaml" "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null
split -b 15000000 "$RUN/last.pth" "$OUT/last.pth.part-" || exit 1
ls -la "$OUT"
