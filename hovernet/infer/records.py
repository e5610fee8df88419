"""Per-nucleus records of a labelled instance map, as the original HoVer-Net builds them.

`instance_records` gives each nucleus its bounding box, centroid (image moments), first OpenCV
contour of its cropped mask and majority-vote type (see `hovernet.infer.postprocess`, whose
last step it is), from `scipy.ndimage.find_objects` crops and one `np.bincount` per statistic
over the nuclei's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from hovernet.errors import HoverNetError
from hovernet.resources import gc_paused

MIN_CONTOUR_POINTS = 3

Nucleus = dict[str, Any]


def _outer_contour(mask: np.ndarray) -> np.ndarray | None:
    """The original's contour of a cropped uint8 mask: the first one OpenCV finds, as N x 2."""
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    contour = np.squeeze(contours[0].astype(np.int32))
    if contour.ndim != 2 or contour.shape[0] < MIN_CONTOUR_POINTS:
        return None
    return contour


def _vote_types(ids: np.ndarray, types: np.ndarray, n_ids: int) -> tuple[np.ndarray, np.ndarray]:
    """The original's majority vote per instance id, from the ids and types of the nuclei's
    pixels: (type, type_prob) arrays indexed by id.

    The original sorts (type, count) by count, stable, and skips type 0 when another type is
    present: that is the first arg-max over types >= 1. type_prob = count / (pixels + 1e-6),
    the same division per id as the original's loop.
    """
    n_types = int(types.max()) + 1 if len(types) else 1
    counts = np.bincount(ids * n_types + types, minlength=(n_ids + 1) * n_types)
    counts = counts.reshape(n_ids + 1, n_types)
    inst_type = np.zeros(n_ids + 1, np.intp)
    if n_types > 1:
        typed = counts[:, 1:].any(axis=1)
        inst_type[typed] = np.argmax(counts[typed, 1:], axis=1) + 1
    chosen = counts[np.arange(n_ids + 1), inst_type]
    return inst_type, chosen / (counts.sum(axis=1) + 1.0e-6)


def instance_records(
    inst_map: np.ndarray,
    type_map: np.ndarray | None = None,
    type_softmax: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, Nucleus]]:
    """Per-nucleus records of a labelled map; returns (relabelled map 1..N, records).

    `type_map` (H x W non-negative ints) gives the majority-vote `type` and its pixel share
    `type_prob` as the original: background votes (0) lose to any other type present.
    `type_softmax` (H x W x C) adds `type_probs`, the mean softmax of each class over the nucleus.
    Instances whose contour has < 3 points are dropped from records and map alike.

    Per-id statistics come from the nuclei's pixels only, in raster order (`np.bincount`: each
    id's sum adds the same values in the same order as over the whole map, so the same
    floats); the centroid is the original's `cv2.moments` m10 / m00 + cmin, with the exact
    integer pixel sums in box coordinates.
    """
    inst_map = np.asarray(inst_map)
    if inst_map.ndim != 2 or not np.issubdtype(inst_map.dtype, np.integer):
        raise HoverNetError(
            f"instance map has shape {inst_map.shape} and dtype {inst_map.dtype}: "
            "pass a 2-D integer label image"
        )
    n_ids = int(inst_map.max()) if inst_map.size else 0
    boxes = ndimage.find_objects(inst_map) if n_ids else []
    stats = _id_stats(inst_map, n_ids, boxes, type_map, type_softmax)
    nuclei: dict[int, Nucleus] = {}
    new_ids = np.zeros(n_ids + 1, dtype=np.int32)
    with gc_paused():  # thousands of small lists: see gc_paused
        for old_id, sl in enumerate(boxes, start=1):
            if sl is None:
                continue
            record = _record(inst_map, old_id, sl, stats)
            if record is None:
                continue
            new_id = len(nuclei) + 1
            new_ids[old_id] = new_id
            nuclei[new_id] = record
    return new_ids[inst_map], nuclei


@dataclass(frozen=True)
class _IdStats:
    """Per-id values of a labelled map, indexed by id (0: background): pixel count and the
    first moments in box coordinates (Python floats, as `cv2.moments` gives them), the voted
    type and its share (None without a type map), the mean softmax (None without one)."""

    m00: list[float]
    m10: list[float]
    m01: list[float]
    inst_type: list[int] | None
    type_prob: list[float] | None
    mean_probs: np.ndarray | None

    def __post_init__(self) -> None:
        if not len(self.m00) == len(self.m10) == len(self.m01):
            raise ValueError("one moment of each order per id")


def _id_stats(
    inst_map: np.ndarray,
    n_ids: int,
    boxes: list,
    type_map: np.ndarray | None,
    type_softmax: np.ndarray | None,
) -> _IdStats:
    flat = inst_map.ravel()
    pixels = np.flatnonzero(flat > 0)
    ids = flat[pixels].astype(np.intp)
    inst_type = type_prob = mean_probs = None
    if type_map is not None:
        type_map = np.asarray(type_map).astype(np.int32)
        if type_map.min(initial=0) < 0:
            raise HoverNetError("type map has negative values: pass type ids >= 0 (0 = background)")
        inst_type, type_prob = _vote_types(ids, type_map.ravel()[pixels], n_ids)
        inst_type, type_prob = inst_type.tolist(), type_prob.tolist()
    areas = np.bincount(ids, minlength=n_ids + 1).astype(np.float64)
    if type_softmax is not None:
        softmax = np.asarray(type_softmax)
        softmax = softmax.reshape(-1, softmax.shape[-1])[pixels]
        sums = np.stack(
            [
                np.bincount(ids, weights=softmax[:, c], minlength=n_ids + 1)
                for c in range(softmax.shape[1])
            ],
            axis=1,
        )
        mean_probs = sums / np.maximum(areas, 1)[:, None]
    row0 = np.zeros(n_ids + 1, np.intp)
    col0 = np.zeros(n_ids + 1, np.intp)
    for old_id, sl in enumerate(boxes, start=1):
        if sl is not None:
            row0[old_id], col0[old_id] = sl[0].start, sl[1].start
    width = inst_map.shape[1]
    m10 = np.bincount(ids, weights=pixels % width - col0[ids], minlength=n_ids + 1)
    m01 = np.bincount(ids, weights=pixels // width - row0[ids], minlength=n_ids + 1)
    return _IdStats(areas.tolist(), m10.tolist(), m01.tolist(), inst_type, type_prob, mean_probs)


def _record(inst_map: np.ndarray, old_id: int, sl: tuple, stats: _IdStats) -> Nucleus | None:
    """The record of id `old_id` (box `sl`), or None when its contour has < 3 points."""
    contour = _outer_contour((inst_map[sl] == old_id).view(np.uint8))
    if contour is None:
        return None
    rmin, cmin = sl[0].start, sl[1].start
    m00 = stats.m00[old_id]
    record: Nucleus = {
        "bbox": [[rmin, cmin], [sl[0].stop, sl[1].stop]],
        "centroid": [stats.m10[old_id] / m00 + cmin, stats.m01[old_id] / m00 + rmin],
        "contour": (contour + np.array([cmin, rmin], dtype=np.int32)).tolist(),
        "type": None,
        "type_prob": None,
    }
    if stats.inst_type is not None:
        record["type"] = stats.inst_type[old_id]
        record["type_prob"] = stats.type_prob[old_id]
    if stats.mean_probs is not None:
        record["type_probs"] = stats.mean_probs[old_id].tolist()
    return record
