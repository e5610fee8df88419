#!/usr/bin/env bash
# The one accelerator session of issues 9-11 (H200): GPU benchmarks, then training the bundled
# model. Expects the resampled data in .data/bundled (prepare_data.py) and the wheels that the
# GPU image lacks in .whl; writes its results under $OUT. Kept as the record of what was run.
set -uo pipefail
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, hovernet.io.wsi, hovernet.train.loop; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
B=.data/bundled; P=/tmp/patches
# patches for training (CPU, in the background while the network benchmark runs)
(python3 -m hovernet extract-patches --images $B/monuseg/images --annotations $B/monuseg/labels --out $P/monuseg --window 364 --step 224 --quiet
 python3 -m hovernet extract-patches --images $B/dsb/images --annotations $B/dsb/labels --out $P/dsb --window 364 --step 224 --quiet
 python3 -m hovernet extract-patches --images $B/consep/images --annotations $B/consep/labels --format inst --type-info $B/consep/type_info.json --out $P/consep --window 364 --step 224 --quiet
) > $OUT/extract.log 2>&1 &
EXTRACT=$!
el "bench_train"
timeout 100 python3 benchmarks/bench_train.py --device cuda --steps 20 --warmup 5 --archs original fast lite 2>&1 | tee $OUT/bench_train.txt
el "extract wait"; wait $EXTRACT; tail -3 $OUT/extract.log
el "bench_slide"
timeout 100 python3 benchmarks/bench_slide.py --device cuda --arch fast --precision bf16 --precision fp32 --workers 14 2>&1 | tee $OUT/bench_slide.txt
el "train"
LEFT=${TRAIN_MIN:-4.0}
timeout 330 python3 -m hovernet train --data $P/monuseg --data $P/consep --data $P/dsb --out /tmp/run \
    --config scripts/bundled_model/lite.yaml --time-limit $LEFT --device cuda --workers 14 > $OUT/train.log 2>&1
echo "train exit $?"; tail -25 $OUT/train.log
el "pack"
tar czf $OUT/run.tgz --exclude=run/tensorboard -C /tmp run
ls -la /tmp/run $OUT
