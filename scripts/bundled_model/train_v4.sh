#!/usr/bin/env bash
# v4, a candidate lite-v4 (not shipped: no better than lite-v3 on validation; docs/model-card.md,
# "What limits it"): lite-v3 fine-tuned once more with lite-v3's own recipe (train_v3.sh:
# v3.yaml, 1,200 steps, the same four folders), now that the HV targets keep the small nuclei:
# their minimum size is scaled to the run's 0.5 um/px (8 px, where lite-v3 was trained with the
# original's 30 px at 40x; docs/training-data-targets.md).
#   bash scripts/bundled_model/train_v4.sh SHARED_DATA WORK_DIR LITE_V3.pth [extra train options]
# LITE_V3.pth: hovernet/weights/lite-v3.pth, or once it has left the package
#   git show 4692b7a:hovernet/weights/lite-v3.pth > lite-v3.pth
# Background, resumable, and finished as train_v3.sh is, in WORK_DIR/v4run and
# WORK_DIR/lite-v4.pth.
set -euo pipefail
RUN_NAME=v4run OUT_NAME=lite-v4.pth exec bash "$(dirname "$0")/train_v3.sh" "$@"
