"""Nucleus counts per class and their coefficient of determination (CoNIC's task 2).

- `class_counts`: how many nuclei of each class one image holds, counted as CoNIC counts them:
  a nucleus is counted when any of its pixels lies in the central `crop` x `crop` square
  (224 of CoNIC's 256 x 256 patches); its class is its majority non-zero type.
- `count_r2`: R^2 of predicted against true counts (images x classes), per class, and their
  mean (CoNIC's multi-class R^2, scikit-learn's `r2_score` per column).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.metrics.detection import instance_centroids
from hovernet.metrics.overlap import as_label_map

CONIC_COUNT_CROP = 224


def center_window(shape: tuple[int, int], crop: int | None) -> tuple[slice, slice]:
    """Rows and columns of the central crop x crop square (CoNIC's `cropping_center`: offset
    int((size - crop) / 2)); a side shorter than `crop`, or crop None / 0, is kept whole."""
    if not crop:
        return slice(None), slice(None)
    out = []
    for size in shape:
        side = min(int(crop), int(size))
        start = (int(size) - side) // 2
        out.append(slice(start, start + side))
    return out[0], out[1]


def class_counts(
    inst: np.ndarray,
    types: np.ndarray,
    class_ids: Sequence[int],
    crop: int | None = CONIC_COUNT_CROP,
) -> np.ndarray:
    """Number of nuclei of each class in `class_ids` (int64, one per class) of one image.

    A nucleus counts when any of its pixels is in the central crop (None or 0: the whole
    image); its class is the most frequent non-zero type of all its pixels."""
    inst = as_label_map(inst, "instance map")
    ids, _, majority = instance_centroids(inst, types)
    rows, cols = center_window(inst.shape, crop)
    inside = np.isin(ids, np.unique(inst[rows, cols]))
    return np.array([int(np.sum(inside & (majority == c))) for c in class_ids], np.int64)


def _as_counts(counts, name: str) -> np.ndarray:
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 2:
        raise HoverNetError(f"{name}: expected counts of shape images x classes, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise HoverNetError(f"{name}: counts must be finite numbers")
    return arr


def count_r2(true_counts, pred_counts) -> dict:
    """R^2 = 1 - sum (t - p)^2 / sum (t - mean t)^2 of each class (column) over the images
    (rows), and their mean ("r2"). A class whose true count is the same in every image gives
    1.0 when predicted exactly, else 0.0 (scikit-learn's convention, which CoNIC's code uses);
    fewer than two images give NaN (R^2 is not defined)."""
    t = _as_counts(true_counts, "true counts")
    p = _as_counts(pred_counts, "pred counts")
    if t.shape != p.shape:
        raise HoverNetError(
            f"count_r2: true counts {t.shape} and predicted counts {p.shape} differ in shape"
        )
    if t.shape[0] < 2:
        per_class = np.full(t.shape[1], np.nan)
    else:
        ss_res = ((t - p) ** 2).sum(axis=0)
        ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
        safe = np.where(ss_tot > 0, ss_tot, 1.0)
        per_class = np.where(ss_tot > 0, 1.0 - ss_res / safe, np.where(ss_res == 0, 1.0, 0.0))
    mean = float(per_class.mean()) if per_class.size else float("nan")
    return {"r2": mean, "per_class": [float(v) for v in per_class]}
