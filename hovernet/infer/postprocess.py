"""HoVer-Net post-processing: network maps in, instance map and per-nucleus records out.

`postprocess` reproduces the original implementation (vqdang/hover_net,
`models/hovernet/post_proc.py`) step for step and constant for constant, so released checkpoints
give the same nuclei:

1. foreground = nucleus probability >= 0.5, connected components under 10 px removed;
2. the h and v maps are min-max normalised to [0, 1], differentiated with 21 x 21 Sobel kernels
   (d/dx of h, d/dy of v), the gradients min-max normalised and inverted; their maximum is the
   "overall" boundary-ness map, zeroed outside the foreground;
3. energy = -GaussianBlur3x3((1 - overall) * foreground);
4. markers = foreground minus (overall >= 0.4), holes filled, opened with a 5 x 5 ellipse,
   labelled, components under 10 px removed;
5. marker-controlled watershed of the energy inside the foreground.

Records (bbox, centroid from image moments, the first OpenCV contour of the cropped instance,
majority-vote type) follow the original too, but are built from `scipy.ndimage.find_objects`
bounding-box crops and one `np.bincount` per statistic instead of one full-image mask and
`np.unique` per nucleus (see benchmarks/bench_postprocess.py).

Resolution. The original's pixel constants (10 px minimum size, 21 x 21 Sobel, 5 x 5 marker
opening) are for maps at 40x (0.25 um/px), the resolution of the data its checkpoints were
trained on. `postprocess(..., mpp=)` scales them to the maps' resolution (`PostprocessParams.
for_mpp`: sizes by 0.25 / mpp, areas by its square); without `mpp` (or at 0.25) they are the
original's, exactly. Measured on the bundled 0.5 um/px model's validation images (3 MoNuSeg
tiles, 80 CoNSeP crops, never trained on): mean PQ 0.510 -> 0.503 on MoNuSeg and 0.264 -> 0.392
on CoNSeP, whose small crowded nuclei the 40x-sized marker opening erased at 20x.

Two defects of the original are fixed; neither changes anything on the 19 reference cases
(tests/test_postprocess.py checks maps and records against them):
- the original drops nuclei whose contour has fewer than 3 points from the records but leaves
  them in the instance map; here they are removed from the map as well;
- the original's ids may have gaps (markers removed after labelling); here ids are 1..N, in the
  original's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from hovernet.errors import HoverNetError

# Constants of the original post-processing.
FOREGROUND_THRESHOLD = 0.5
MIN_OBJECT_SIZE = 10
SOBEL_KSIZE = 21
MARKER_THRESHOLD = 0.4
MARKER_OPEN_KSIZE = 5
MIN_CONTOUR_POINTS = 3
REFERENCE_MPP = 0.25  # the resolution the constants above are for (40x)


def _odd(x: float, low: int, high: int) -> int:
    k = int(round(x))
    k += 1 - k % 2
    return min(max(k, low), high)


@dataclass(frozen=True)
class PostprocessParams:
    """The pixel constants of the watershed; the defaults are the original's (40x maps)."""

    min_object_size: int = MIN_OBJECT_SIZE
    sobel_ksize: int = SOBEL_KSIZE
    marker_open_ksize: int = MARKER_OPEN_KSIZE

    @classmethod
    def for_mpp(cls, mpp: float | None) -> PostprocessParams:
        """The constants for maps at `mpp` um/px (None: the original's, unscaled)."""
        if mpp is None:
            return cls()
        if not mpp > 0:
            raise HoverNetError(f"mpp must be a positive number of microns per pixel, got {mpp}")
        k = REFERENCE_MPP / mpp  # how many map pixels one 40x pixel spans
        return cls(
            min_object_size=max(1, int(MIN_OBJECT_SIZE * k * k + 0.5)),
            sobel_ksize=_odd(SOBEL_KSIZE * k, 3, 31),  # OpenCV's Sobel takes odd sizes <= 31
            marker_open_ksize=_odd(MARKER_OPEN_KSIZE * k, 1, 63),
        )


Nucleus = dict[str, Any]


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the labelled components with fewer than `min_size` pixels (in place)."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return labels


def _minmax(x: np.ndarray) -> np.ndarray:
    return cv2.normalize(x, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def hv_watershed(
    prob: np.ndarray,
    h_map: np.ndarray,
    v_map: np.ndarray,
    params: PostprocessParams | None = None,
) -> np.ndarray:
    """Instance labels (int32, ids as the original numbers them, possibly with gaps).

    `prob` is the nucleus probability, `h_map`/`v_map` the horizontal/vertical distance maps,
    all H x W; `params` the pixel constants (default: the original's).
    """
    params = params or PostprocessParams()
    prob = np.asarray(prob, dtype=np.float32)
    h_map = np.asarray(h_map, dtype=np.float32)
    v_map = np.asarray(v_map, dtype=np.float32)

    fg = ndimage.label(prob >= FOREGROUND_THRESHOLD)[0]
    fg = (_remove_small(fg, params.min_object_size) > 0).astype(np.int32)

    sobel_h = cv2.Sobel(_minmax(h_map), cv2.CV_64F, 1, 0, ksize=params.sobel_ksize)
    sobel_v = cv2.Sobel(_minmax(v_map), cv2.CV_64F, 0, 1, ksize=params.sobel_ksize)
    # float32 - int32 promotes to float64, as in the original
    overall = np.maximum(1 - _minmax(sobel_h), 1 - _minmax(sobel_v)) - (1 - fg)
    overall[overall < 0] = 0

    energy = -cv2.GaussianBlur((1.0 - overall) * fg, (3, 3), 0)

    markers = fg - (overall >= MARKER_THRESHOLD)
    markers[markers < 0] = 0
    markers = ndimage.binary_fill_holes(markers).astype(np.uint8)
    size = params.marker_open_ksize
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    markers = cv2.morphologyEx(markers, cv2.MORPH_OPEN, kernel)
    markers = _remove_small(ndimage.label(markers)[0], params.min_object_size)

    return watershed(energy, markers=markers, mask=fg).astype(np.int32)


def _outer_contour(mask: np.ndarray) -> np.ndarray | None:
    """The original's contour of a cropped uint8 mask: the first one OpenCV finds, as N x 2."""
    contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    contour = np.squeeze(contours[0].astype(np.int32))
    if contour.ndim != 2 or contour.shape[0] < MIN_CONTOUR_POINTS:
        return None
    return contour


def _vote_types(inst_map: np.ndarray, type_map: np.ndarray, n_ids: int) -> np.ndarray:
    """Pixel counts per (instance id, type): (n_ids + 1) x n_types."""
    n_types = int(type_map.max()) + 1
    flat = inst_map.ravel().astype(np.int64) * n_types + type_map.ravel()
    return np.bincount(flat, minlength=(n_ids + 1) * n_types).reshape(n_ids + 1, n_types)


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
    """
    inst_map = np.asarray(inst_map)
    if inst_map.ndim != 2 or not np.issubdtype(inst_map.dtype, np.integer):
        raise HoverNetError(
            f"instance map has shape {inst_map.shape} and dtype {inst_map.dtype}: "
            "pass a 2-D integer label image"
        )
    n_ids = int(inst_map.max()) if inst_map.size else 0
    votes = areas = mean_probs = None
    if type_map is not None:
        type_map = np.asarray(type_map).astype(np.int32)
        if type_map.min(initial=0) < 0:
            raise HoverNetError("type map has negative values: pass type ids >= 0 (0 = background)")
        votes = _vote_types(inst_map, type_map, n_ids)
    if type_softmax is not None:
        areas = np.bincount(inst_map.ravel(), minlength=n_ids + 1).astype(np.float64)
        sums = np.stack(
            [
                np.bincount(
                    inst_map.ravel(), weights=type_softmax[..., c].ravel(), minlength=n_ids + 1
                )
                for c in range(type_softmax.shape[-1])
            ],
            axis=1,
        )
        mean_probs = sums / np.maximum(areas, 1)[:, None]

    nuclei: dict[int, Nucleus] = {}
    new_ids = np.zeros(n_ids + 1, dtype=np.int32)
    for old_id, sl in enumerate(ndimage.find_objects(inst_map), start=1):
        if sl is None:
            continue
        crop = (inst_map[sl] == old_id).astype(np.uint8)
        contour = _outer_contour(crop)
        if contour is None:
            continue
        rmin, cmin = sl[0].start, sl[1].start
        m = cv2.moments(crop)
        record: Nucleus = {
            "bbox": [[rmin, cmin], [sl[0].stop, sl[1].stop]],
            "centroid": [m["m10"] / m["m00"] + cmin, m["m01"] / m["m00"] + rmin],
            "contour": (contour + np.array([cmin, rmin], dtype=np.int32)).tolist(),
            "type": None,
            "type_prob": None,
        }
        if votes is not None:
            counts = votes[old_id]
            # the original sorts (type, count) by count, stable, and skips type 0 when another
            # type is present: that is the first arg-max over types >= 1
            inst_type = int(np.argmax(counts[1:]) + 1) if counts[1:].any() else 0
            record["type"] = inst_type
            record["type_prob"] = float(counts[inst_type] / (counts.sum() + 1.0e-6))
        if mean_probs is not None:
            record["type_probs"] = mean_probs[old_id].tolist()
        new_id = len(nuclei) + 1
        new_ids[old_id] = new_id
        nuclei[new_id] = record
    return new_ids[inst_map], nuclei


def postprocess(
    pred_map: np.ndarray,
    nr_types: int | None = None,
    type_softmax: np.ndarray | None = None,
    mpp: float | None = None,
) -> tuple[np.ndarray, dict[int, Nucleus]]:
    """Turn HoVer-Net outputs into an instance map and per-nucleus records.

    `mpp` is the maps' resolution (um/px): the watershed's pixel constants are scaled to it
    (`PostprocessParams.for_mpp`); None keeps the original's (40x) constants.

    `pred_map` is H x W x 3 = [nucleus probability, h, v] or, for a typed model, H x W x 4 =
    [arg-maxed type id, probability, h, v] (the original's layout). `nr_types` is accepted for
    compatibility and checked against the inputs. `type_softmax` (H x W x C softmax of the type
    branch) adds `type_probs`; with a 3-channel `pred_map` its arg-max gives the type map.

    Returns `inst_map` (int32, 0 = background, ids 1..N) and `{id: {"bbox": [[rmin, cmin],
    [rmax, cmax]], "centroid": [x, y], "contour": [[x, y], ...], "type", "type_prob"}}`, with
    `"type_probs"` when `type_softmax` is given; `type`/`type_prob` are None when untyped.
    """
    pred_map = np.asarray(pred_map)
    if pred_map.ndim != 3 or pred_map.shape[-1] not in (3, 4):
        raise HoverNetError(
            f"pred_map has shape {pred_map.shape}: pass H x W x 3 [probability, h, v] or "
            "H x W x 4 [type, probability, h, v]"
        )
    typed = pred_map.shape[-1] == 4
    if nr_types is not None and not typed and type_softmax is None:
        raise HoverNetError(
            f"nr_types={nr_types} but pred_map has 3 channels: pass H x W x 4 with the type "
            "map first, or type_softmax, or nr_types=None"
        )
    if type_softmax is not None:
        type_softmax = np.asarray(type_softmax)
        if type_softmax.shape[:2] != pred_map.shape[:2] or type_softmax.ndim != 3:
            raise HoverNetError(
                f"type_softmax has shape {type_softmax.shape}, pred_map {pred_map.shape}: pass "
                "an H x W x C softmax of the same height and width"
            )
        if nr_types is not None and type_softmax.shape[-1] != nr_types:
            raise HoverNetError(
                f"type_softmax has {type_softmax.shape[-1]} classes but nr_types={nr_types}"
            )

    inst_channels = pred_map[..., 1:] if typed else pred_map
    labels = hv_watershed(
        inst_channels[..., 0],
        inst_channels[..., 1],
        inst_channels[..., 2],
        PostprocessParams.for_mpp(mpp),
    )
    type_map = None
    if typed:
        type_map = pred_map[..., 0].astype(np.int32)
    elif type_softmax is not None:
        type_map = np.argmax(type_softmax, axis=-1)
    return instance_records(labels, type_map, type_softmax)
