#!/usr/bin/env bash
# Slide-mode throughput check for one GPU (issue 20, point 3), in under 8 minutes on an H200.
#
#   scripts/gpu_check.sh                  # CUDA: fast mode, random weights, bf16, 16384^2 slide
#   COMPILE=1 scripts/gpu_check.sh        # also the torch.compile'd network (if time is left)
#   scripts/gpu_check.sh --device cpu     # smoke run on the CPU: lite net, 1024^2 slide, fp32
#
# Steps (each under its own time limit; the output ends with a summary):
#   1. the CUDA tests of the engine (device maps = CPU maps, in order; batch from free memory);
#   2. benchmarks/bench_engine.py profile: main-process ms per window per stage, the engine as
#      it was ("before") against as it is ("after"), and both free-running against the
#      network alone (windows/s, efficiency);
#   3. benchmarks/bench_engine.py --slide: a synthetic slide through run_slides, batch from free
#      GPU memory, GPU utilisation sampled; tissue mm^2/min, network-only s for the same windows
#      (inputs and outputs on the device) over the slide's wall s = efficiency;
#   4. with COMPILE=1, step 3 again with --compile when at least 4 minutes remain.
# Targets on the H200: >= 60 mm^2/min and efficiency >= 0.85 (printed, not enforced). The summary
# has one RESULT line per step: the profile's engine efficiency (network alone / the engine's
# loop, no slide set-up) and each slide run's (network alone / the whole slide's wall time).
# Environment: PYTHON (default .venv/bin/python, else python3), ARCH, SIZE, PRECISION, WORKERS.
set -uo pipefail

DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    *) echo "usage: $0 [--device cuda|cpu]" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }

if [ "$DEVICE" = cpu ]; then
  ARCH=${ARCH:-lite}; SIZE=${SIZE:-1024}; PRECISION=${PRECISION:-fp32}; WORKERS=${WORKERS:-1}
  PROFILE_ARGS=(--regions 1 --region 700 --repeat 1)
else
  ARCH=${ARCH:-fast}; SIZE=${SIZE:-16384}; PRECISION=${PRECISION:-bf16}
  WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
  PROFILE_ARGS=(--regions 3 --repeat 1 --batch_size 32)
fi

if ! "$PYTHON" -c "import torch, hovernet" 2>/dev/null; then
  echo "error: $PYTHON cannot import torch and hovernet: set PYTHON to an environment with both" >&2
  exit 2
fi
if [ "$DEVICE" != cpu ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "error: no CUDA device for $PYTHON (use --device cpu for the smoke run)" >&2; exit 2; }
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "device=$DEVICE arch=$ARCH size=$SIZE precision=$PRECISION workers=$WORKERS"

status=0
step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  echo; echo "== $name (limit ${limit} s, at $(elapsed) s)"
  timeout "$limit" "$@"; local rc=$?
  [ $rc -eq 0 ] || { echo "!! $name: exit $rc"; status=1; }
  return $rc
}

if [ "$DEVICE" != cpu ]; then
  if [ -d ../shared/reference ] || [ -n "${HOVERNET_SHARED:-}" ]; then
    step "CUDA tests" 90 "$PYTHON" -m pytest -q -m gpu tests/test_engine_device.py \
      -p no:cacheprovider
  else
    echo; echo "== CUDA tests skipped: no ../shared test data here (the profile compares maps)"
  fi
fi
LOG=$(mktemp)
step "profile per window" 120 "$PYTHON" benchmarks/bench_engine.py --device "$DEVICE" \
  --arch "$ARCH" --precision "$PRECISION" "${PROFILE_ARGS[@]}" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
SLIDE=(--slide --device "$DEVICE" --arch "$ARCH" --precision "$PRECISION" --size "$SIZE"
       --workers "$WORKERS")
step "slide throughput" 210 "$PYTHON" benchmarks/bench_engine.py "${SLIDE[@]}" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ "${COMPILE:-0}" = 1 ] && [ "$(elapsed)" -lt 240 ]; then
  step "slide throughput, compiled" $(( 470 - $(elapsed) )) "$PYTHON" \
    benchmarks/bench_engine.py "${SLIDE[@]}" --compile 2>&1 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

echo; echo "== summary ($(elapsed) s)"
grep -h '^RESULT' "$LOG" || { echo "no result"; status=1; }
rm -f "$LOG"
exit $status
