"""`hovernet stats --mode errors`: why predictions lose PQ (hovernet.metrics.errors).

Per image and over all images: PQ's true positives, and each false negative and false positive
put down to one cause (missed, merged, split, outline; spurious, split, merged, outline). Over
all images, recall by nucleus area (--area-bins; microns squared with --mpp), at the image
border against inside it, and, with --type-ids, by true type.
"""

from __future__ import annotations

import numpy as np

from hovernet.config import ORIGINAL_MPP
from hovernet.io.prediction_files import read_scored_pair
from hovernet.metrics.errors import (
    FN_CAUSES,
    FP_CAUSES,
    PAIRED,
    area_groups,
    error_breakdown,
    recall_by,
)

# default area bins: microns squared (with --mpp), else pixels (the same bins at 40x)
AREA_BINS_UM2 = (5.0, 10.0, 20.0, 40.0)
AREA_BINS_PX = tuple(b / ORIGINAL_MPP**2 for b in AREA_BINS_UM2)
COUNT_KEYS = (
    "n_true",
    "n_pred",
    "tp",
    *(f"fn_{c}" for c in FN_CAUSES),
    *(f"fp_{c}" for c in FP_CAUSES),
)


def run_errors(cfg, pairs: list, progress=None) -> dict:
    """Causes per image and pooled, and pooled recall by area, border and type."""
    per_image, areas, border, paired, kinds = {}, [], [], [], []
    for name, pred_file, true_file in pairs:
        true, type_map, pred = read_scored_pair(pred_file, true_file, cfg.type_ids is not None)
        b = error_breakdown(true, pred, type_map, cfg.match_iou)
        per_image[name] = b.counts()
        areas.append(b.true_area)
        border.append(b.true_border)
        paired.append(b.true_cause == PAIRED)
        kinds.append(b.true_type)
        if progress is not None:
            progress.advance(1)
    hit = np.concatenate(paired)
    bins = cfg.area_bins or (AREA_BINS_PX if cfg.mpp is None else AREA_BINS_UM2)
    area = np.concatenate(areas).astype(float) * (1.0 if cfg.mpp is None else cfg.mpp**2)
    groups, labels = area_groups(area, bins)
    result = {
        "mode": "errors",
        "per_image": per_image,
        "total": {k: sum(v[k] for v in per_image.values()) for k in COUNT_KEYS},
        "match_iou": cfg.match_iou,
        "area_unit": "px" if cfg.mpp is None else "um2",
        "recall_by_area": recall_by(groups, hit, labels),
        "recall_by_border": recall_by(
            np.concatenate(border).astype(int), hit, ["inside", "border"]
        ),
    }
    if cfg.type_ids is not None:
        true_type = np.concatenate(kinds)
        index = np.full(max(int(true_type.max(initial=0)), *cfg.type_ids) + 1, -1)
        index[list(cfg.type_ids)] = np.arange(len(cfg.type_ids))
        result["recall_by_type"] = recall_by(index[true_type], hit, [str(t) for t in cfg.type_ids])
    return result


def table_rows(result: dict) -> tuple[list[str], list[list]]:
    """Header and rows: one per image, then the totals."""
    header = ["image", *COUNT_KEYS]
    rows = [[n, *(v[k] for k in COUNT_KEYS)] for n, v in result["per_image"].items()]
    rows.append(["total", *(result["total"][k] for k in COUNT_KEYS)])
    return header, rows


def recall_lines(result: dict) -> str:
    """The pooled recall by area, border and type, one line each."""

    def line(title: str, groups: list[dict]) -> str:
        cells = [
            f"{g['group']}: "
            + ("-" if g["recall"] is None else f"{g['recall']:.3f}")
            + f" ({g['n_true']})"
            for g in groups
        ]
        return f"recall by {title}: " + ", ".join(cells)

    unit = "um^2" if result["area_unit"] == "um2" else "px"
    out = [line(f"area ({unit})", result["recall_by_area"])]
    out.append(line("place", result["recall_by_border"]))
    if "recall_by_type" in result:
        out.append(line("type", result["recall_by_type"]))
    return "\n".join(out)
