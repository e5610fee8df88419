"""Detection and classification of nuclei from centroids (the original's `--mode=type`).

True and predicted centroids are paired one to one with the Hungarian algorithm on their
Euclidean distances; a pair counts when its distance is <= radius (12 px by default, about
3 um at 40x). Over the paired nuclei: detection F1 (`f1_d`), type accuracy (`acc`) and per-type
F1 with the weights [2, 2, 1, 1] of the HoVer-Net paper. Statistics are pooled over all images
before dividing, as the original's `compute_stats.py --mode=type`.

Empty sets: an image without truth or prediction simply has no pairs (the original instead
inserts a phantom nucleus of type 0 at (0, 0); see docs/metrics.md). A ratio whose numerator
and denominator are both 0 is 1.0 when truth and prediction are both empty and 0.0 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from hovernet.errors import HoverNetError
from hovernet.metrics.overlap import as_label_map, compact_labels

DEFAULT_RADIUS_PX = 12.0
TYPE_F1_WEIGHTS = (2.0, 2.0, 1.0, 1.0)  # fp_dt, fn_dt, fp_d, fn_d


def radius_pixels(radius: float = DEFAULT_RADIUS_PX, mpp: float | None = None) -> float:
    """Pairing radius in pixels: `radius` is in pixels when `mpp` is None, else in microns
    (converted with the image resolution `mpp`, microns per pixel)."""
    if radius <= 0:
        raise HoverNetError(f"pairing radius must be > 0, got {radius}")
    if mpp is None:
        return float(radius)
    if mpp <= 0:
        raise HoverNetError(f"mpp (microns per pixel) must be > 0, got {mpp}")
    return float(radius) / float(mpp)


def _as_points(xy: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(
        xy, dtype=np.float32
    )  # float32 as the original, so distances match bit for bit
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise HoverNetError(f"{name}: expected N x 2 centroids [x, y], got shape {arr.shape}")
    return arr


def pair_coordinates(
    true_xy: np.ndarray, pred_xy: np.ndarray, radius: float = DEFAULT_RADIUS_PX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one pairing of two point sets (N x 2 and M x 2, [x, y]).

    As the original: one Hungarian assignment minimising the summed distance over all points,
    then pairs farther apart than `radius` are dropped. Returns (pairs K x 2 of [true index,
    pred index], unpaired true indices, unpaired pred indices).
    """
    a = _as_points(true_xy, "true centroids")
    b = _as_points(pred_xy, "pred centroids")
    if len(a) == 0 or len(b) == 0:
        empty = np.zeros((0, 2), dtype=np.int64)
        return empty, np.arange(len(a)), np.arange(len(b))
    dx = a[:, None, 0] - b[None, :, 0]
    dy = a[:, None, 1] - b[None, :, 1]
    dist = np.sqrt(dx * dx + dy * dy)
    rows, cols = linear_sum_assignment(dist)
    keep = dist[rows, cols] <= radius
    pairs = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    unpaired_true = np.setdiff1d(np.arange(len(a)), pairs[:, 0])
    unpaired_pred = np.setdiff1d(np.arange(len(b)), pairs[:, 1])
    return pairs, unpaired_true, unpaired_pred


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den:
        return float(num / den)
    return 1.0 if both_empty else 0.0


@dataclass(frozen=True)
class TypeStats:
    """Pooled detection / classification statistics over one or more images."""

    f1_d: float
    precision_d: float
    recall_d: float
    acc: float
    f1_type: dict[int, float] = field(default_factory=dict)
    paired: int = 0
    unpaired_true: int = 0
    unpaired_pred: int = 0

    def as_dict(self) -> dict:
        return {
            "f1_d": self.f1_d,
            "acc": self.acc,
            "f1_type": {str(k): v for k, v in self.f1_type.items()},
            "precision_d": self.precision_d,
            "recall_d": self.recall_d,
            "paired": self.paired,
            "unpaired_true": self.unpaired_true,
            "unpaired_pred": self.unpaired_pred,
        }


@dataclass(frozen=True)
class _Pooled:
    """The types of the nuclei of every image after pairing: both sides of the pairs, and the
    unpaired nuclei of the truth and of the prediction."""

    paired_true: np.ndarray
    paired_pred: np.ndarray
    unpaired_true: np.ndarray
    unpaired_pred: np.ndarray


def _type_f1(pooled: _Pooled, type_id: int, weights: Sequence[float], exhaustive: bool) -> float:
    """F1 of one type: paired nuclei where either side has the type, plus unpaired of the type."""
    paired_true, paired_pred = pooled.paired_true, pooled.paired_pred
    unpaired_true, unpaired_pred = pooled.unpaired_true, pooled.unpaired_pred
    t_is = paired_true == type_id
    p_is = paired_pred == type_id
    sel = t_is | p_is  # the original keeps only these pairs, so its tn_dt is always 0
    tp_dt = int((t_is & p_is).sum())
    fp_dt = int((~t_is & p_is).sum())
    fn_dt = int((t_is & ~p_is).sum())
    if not exhaustive:  # truth type -1 = "unknown": not a false positive of the prediction
        fp_dt -= int((paired_true[sel] == -1).sum())
    fp_d = int((unpaired_pred == type_id).sum())
    fn_d = int((unpaired_true == type_id).sum())
    num = 2 * tp_dt
    den = num + weights[0] * fp_dt + weights[1] * fn_dt + weights[2] * fp_d + weights[3] * fn_d
    return _ratio(num, den, both_empty=True)  # den == 0: the type is absent on both sides


def type_stats(
    true_xy: Sequence[np.ndarray],
    true_type: Sequence[np.ndarray],
    pred_xy: Sequence[np.ndarray],
    pred_type: Sequence[np.ndarray],
    radius: float = DEFAULT_RADIUS_PX,
    type_ids: Sequence[int] | None = None,
    exhaustive: bool = True,
    weights: Sequence[float] = TYPE_F1_WEIGHTS,
) -> TypeStats:
    """Detection F1, type accuracy and per-type F1 pooled over images.

    Each argument is a list with one entry per image: centroids N x 2 [x, y] and their type ids
    (N,). `radius` is in pixels (see `radius_pixels` for microns). `type_ids` defaults to the
    types present in the truth, as the original. `exhaustive=False` treats truth type -1 as
    "unknown" when counting type errors.
    """
    n = len(true_xy)
    if not (len(true_type) == len(pred_xy) == len(pred_type) == n):
        raise HoverNetError("type_stats: the four lists must have one entry per image each")
    pt_all, pp_all, ut_all, up_all, tt_all = [], [], [], [], []
    for i in range(n):
        tt = np.asarray(true_type[i], dtype=np.int64).reshape(-1)
        pt = np.asarray(pred_type[i], dtype=np.int64).reshape(-1)
        txy = _as_points(true_xy[i], f"true centroids of image {i}")
        pxy = _as_points(pred_xy[i], f"pred centroids of image {i}")
        if len(tt) != len(txy) or len(pt) != len(pxy):
            raise HoverNetError(
                f"image {i}: {len(txy)} true / {len(pxy)} pred centroids but {len(tt)} / "
                f"{len(pt)} types; give one type per centroid"
            )
        pairs, un_t, un_p = pair_coordinates(txy, pxy, radius)
        pt_all.append(tt[pairs[:, 0]])
        pp_all.append(pt[pairs[:, 1]])
        ut_all.append(tt[un_t])
        up_all.append(pt[un_p])
        tt_all.append(tt)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    paired_true, paired_pred = cat(pt_all), cat(pp_all)
    unpaired_true, unpaired_pred = cat(ut_all), cat(up_all)
    tp_d, fp_d, fn_d = len(paired_true), len(unpaired_pred), len(unpaired_true)
    both_empty = tp_d + fp_d + fn_d == 0

    correct = int((paired_true == paired_pred).sum())
    wrong = tp_d - correct
    if not exhaustive:
        wrong -= int((paired_true == -1).sum())
    if type_ids is None:
        type_ids = np.unique(cat(tt_all)).tolist()
    pooled = _Pooled(paired_true, paired_pred, unpaired_true, unpaired_pred)
    f1_type = {int(t): _type_f1(pooled, int(t), weights, exhaustive) for t in type_ids}
    return TypeStats(
        f1_d=_ratio(2 * tp_d, 2 * tp_d + fp_d + fn_d, both_empty),
        precision_d=_ratio(tp_d, tp_d + fp_d, both_empty),
        recall_d=_ratio(tp_d, tp_d + fn_d, both_empty),
        acc=_ratio(correct, correct + wrong, both_empty),
        f1_type=f1_type,
        paired=tp_d,
        unpaired_true=fn_d,
        unpaired_pred=fp_d,
    )


def instance_centroids(
    inst: np.ndarray, type_map: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, centroids N x 2 [x, y], types) of the instances of a map, in ascending id order.

    The centroid is the mean pixel position (the original's mask moments m10/m00, m01/m00).
    The type is the most frequent non-zero type id in the nucleus (ties: the smaller id; 0 when
    the nucleus has only background type), the original's majority vote. Without a type map
    all types are 0.
    """
    inst = as_label_map(inst, "instance map")
    ids, idx, area = compact_labels(inst)
    n = len(ids)
    rr, cc = np.indices(inst.shape)
    cx = np.bincount(idx, weights=cc.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    cy = np.bincount(idx, weights=rr.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    types = np.zeros(n, dtype=np.int64)
    if type_map is not None and n:
        tmap = as_label_map(type_map, "type map")
        if tmap.shape != inst.shape:
            raise HoverNetError(
                f"type map {tmap.shape} and instance map {inst.shape} differ in shape"
            )
        n_types = int(tmap.max()) + 1
        counts = np.bincount(
            idx.astype(np.int64) * n_types + tmap.ravel(), minlength=(n + 1) * n_types
        ).reshape(n + 1, n_types)[1:, 1:]
        if counts.shape[1]:
            types = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1) + 1, 0)
    return ids, np.stack([cx, cy], axis=1), types


def detection_stats(
    true_xy: np.ndarray, pred_xy: np.ndarray, radius: float = DEFAULT_RADIUS_PX
) -> TypeStats:
    """Detection-only statistics of one image (types ignored: acc is 1.0 when any pair exists)."""
    t = _as_points(true_xy, "true centroids")
    p = _as_points(pred_xy, "pred centroids")
    return type_stats(
        [t], [np.zeros(len(t), np.int64)], [p], [np.zeros(len(p), np.int64)], radius, type_ids=[]
    )
