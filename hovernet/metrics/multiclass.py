"""Per-class panoptic quality and the two dataset protocols built on it.

- `per_class_pq`: DQ/SQ/PQ of each nucleus class in one image; `mpq` averages it.
- `pannuke_pq` / `pannuke_folds`: the PanNuke protocol (Gamper et al. 2020, PanNuke-metrics'
  run.py): per image, PQ of each class whose truth is not empty, their mean (mPQ) and the PQ
  of all typed nuclei (bPQ); then the mean per tissue type, then over tissue types; finally
  over the 3 folds. `pannuke_image` / `pannuke_summary` are its two steps, on per-class
  stacks (H x W x C, PanNuke's masks.npy without the background channel).
- `conic_pq_plus`: the CoNIC protocol (Graham et al. 2021): tp / fp / fn / summed IoU of each
  class are summed over all images before dividing (PQ+ per class), mPQ+ = their mean;
  `conic_summary` is the pooling step on per-image `per_class_pq` counts.

Class maps are per-pixel type ids (0 = background), as the instance maps are per-pixel ids.
The instances of class c are the pixels of class c of the instance map, so a predicted nucleus
whose pixels carry two classes counts as two pieces (as PanNuke's and CoNIC's code).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.metrics.instance import pq_pairs
from hovernet.metrics.overlap import as_label_map, overlap

# class ids of the two datasets' label maps (PanNuke: mask channel k holds class k + 1)
PANNUKE_CLASSES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}
CONIC_CLASSES = {
    1: "neutrophil",
    2: "epithelial",
    3: "lymphocyte",
    4: "plasma",
    5: "eosinophil",
    6: "connective",
}


@dataclass(frozen=True)
class PQCounts:
    """Matching counts of one class (or one image); add them to pool over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQCounts) -> PQCounts:
        return PQCounts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.iou_sum + other.iou_sum,
        )

    @property
    def empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0

    def dq_sq_pq(self, eps: float = 0.0) -> tuple[float, float, float]:
        """DQ = tp / (tp + fp/2 + fn/2 + eps), SQ = iou_sum / (tp + 1e-6), PQ = DQ * SQ.

        eps = 0 is the HoVer-Net / PanNuke formula (empty truth and prediction give 1.0);
        eps = 1e-6 is CoNIC's (empty gives 0.0, as its code)."""
        if self.empty and eps == 0.0:
            return 1.0, 1.0, 1.0
        dq = self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn + eps)
        sq = self.iou_sum / (self.tp + 1.0e-6)
        return float(dq), float(sq), float(dq * sq)


def pq_counts(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> PQCounts:
    """tp / fp / fn / summed IoU of two instance maps (pairs at IoU > match_iou)."""
    ov = overlap(true, pred)
    pairs = pq_pairs(ov, match_iou)
    tp = len(pairs)
    return PQCounts(tp, ov.n_pred - tp, ov.n_true - tp, float(ov.iou[pairs].sum()))


def _check_pair(inst: np.ndarray, types: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    inst = as_label_map(inst, f"{name} instance map")
    types = as_label_map(types, f"{name} type map")
    if inst.shape != types.shape:
        raise HoverNetError(
            f"{name}: instance map {inst.shape} and type map {types.shape} differ in shape"
        )
    return inst, types


def per_class_pq(
    true_inst: np.ndarray,
    true_type: np.ndarray,
    pred_inst: np.ndarray,
    pred_type: np.ndarray,
    class_ids: Sequence[int],
    match_iou: float = 0.5,
) -> dict[int, PQCounts]:
    """PQ counts of each class in `class_ids` for one image (type maps are per pixel)."""
    true_inst, true_type = _check_pair(true_inst, true_type, "true")
    pred_inst, pred_type = _check_pair(pred_inst, pred_type, "pred")
    out = {}
    for c in class_ids:
        t = np.where(true_type == c, true_inst, 0)
        p = np.where(pred_type == c, pred_inst, 0)
        out[int(c)] = pq_counts(t, p, match_iou)
    return out


def mpq(per_class: dict[int, PQCounts]) -> float:
    """Mean PQ over the classes present in the truth (tp + fn > 0), the PanNuke convention:
    a class absent from the truth is skipped. NaN when the truth has none of the classes."""
    values = [c.dq_sq_pq()[2] for c in per_class.values() if c.tp + c.fn > 0]
    return float(np.mean(values)) if values else float("nan")


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def class_channels(inst: np.ndarray, types: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """H x W x C stack of per-class instance maps (PanNuke's mask layout without its background
    channel): channel k holds the instance ids of the pixels of class `class_ids[k]`."""
    inst, types = _check_pair(inst, types, "class_channels")
    return np.stack([np.where(types == c, inst, 0) for c in class_ids], axis=-1)


def binarize_channels(channels: np.ndarray) -> np.ndarray:
    """Class-agnostic instance map of a per-class stack: every (channel, id) piece is one
    instance, a later channel on top where two overlap (PanNuke's `binarize`)."""
    out = np.zeros(channels.shape[:2], np.int64)
    offset = 0
    for k in range(channels.shape[-1]):
        ch = as_label_map(channels[..., k], f"channel {k}")
        out = np.where(ch > 0, ch.astype(np.int64) + offset, out)
        offset += int(ch.max()) if ch.size else 0
    return out


def channels_to_maps(
    channels: np.ndarray, class_ids: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """(instance map, type map) of a per-class stack: `binarize_channels` and the class of the
    channel each pixel was taken from."""
    inst = binarize_channels(channels)
    types = np.zeros(inst.shape, np.int64)
    for k, c in enumerate(class_ids):
        types = np.where(np.asarray(channels[..., k]) > 0, int(c), types)
    return inst, np.where(inst > 0, types, 0)


def pannuke_image(
    true_channels: np.ndarray, pred_channels: np.ndarray, match_iou: float = 0.5
) -> tuple[list[float], float]:
    """PanNuke's values of one image from two per-class stacks (H x W x C): the PQ of each
    class (NaN where the true channel is empty, even if the prediction has nuclei there) and
    bPQ, the PQ of the binarized stacks (NaN when the truth has no nucleus)."""
    if true_channels.shape != pred_channels.shape or true_channels.ndim != 3:
        raise HoverNetError(
            f"pannuke_image: true {true_channels.shape} and pred {pred_channels.shape} must be "
            "H x W x C stacks of the same shape"
        )
    values = []
    for k in range(true_channels.shape[-1]):
        t = as_label_map(true_channels[..., k], f"true channel {k}")
        p = as_label_map(pred_channels[..., k], f"pred channel {k}")
        cnt = pq_counts(t, p, match_iou)
        values.append(cnt.dq_sq_pq()[2] if cnt.tp + cnt.fn > 0 else float("nan"))
    binary = pq_counts(
        binarize_channels(true_channels), binarize_channels(pred_channels), match_iou
    )
    bpq = binary.dq_sq_pq()[2] if binary.tp + binary.fn > 0 else float("nan")
    return values, bpq


def pannuke_summary(
    class_pq: Sequence[Sequence[float]],
    bpq: Sequence[float],
    tissues: Sequence[str],
    class_ids: Sequence[int],
) -> dict:
    """PanNuke's summary of per-image values (`pannuke_image`): image mPQ = NaN-mean of its
    classes; per tissue the NaN-mean of its images' mPQ and bPQ; mPQ / bPQ = NaN-mean over the
    tissues (PanNuke's run.py); per class the NaN-mean over images."""
    n = len(class_pq)
    if not (len(bpq) == len(tissues) == n):
        raise HoverNetError("pannuke_summary: give one value list, bPQ and tissue per image")
    img_mpq = [_nanmean(v) for v in class_pq]
    per_tissue = {}
    for tissue in sorted(set(tissues)):
        idx = [i for i, t in enumerate(tissues) if t == tissue]
        per_tissue[tissue] = {
            "mpq": _nanmean([img_mpq[i] for i in idx]),
            "bpq": _nanmean([bpq[i] for i in idx]),
            "n_images": len(idx),
        }
    per_class = {int(c): _nanmean([v[k] for v in class_pq]) for k, c in enumerate(class_ids)}
    return {
        "mpq": _nanmean([v["mpq"] for v in per_tissue.values()]),
        "bpq": _nanmean([v["bpq"] for v in per_tissue.values()]),
        "per_tissue": per_tissue,
        "per_class": per_class,
        "image_mpq": img_mpq,
    }


def pannuke_pq(
    true_inst: Sequence[np.ndarray],
    true_type: Sequence[np.ndarray],
    pred_inst: Sequence[np.ndarray],
    pred_type: Sequence[np.ndarray],
    tissues: Sequence[str],
    class_ids: Sequence[int] = (1, 2, 3, 4, 5),
    match_iou: float = 0.5,
) -> dict:
    """PanNuke mPQ and bPQ of one fold: lists with one map / tissue name per image.

    Per image, a class (or, for bPQ, the whole image) with empty truth is skipped (NaN), even
    if the prediction has nuclei there; mPQ of the image = mean over the remaining classes.
    Returns {"mpq", "bpq", "per_tissue": {tissue: {"mpq", "bpq", "n_images"}}, "per_class":
    {class: PQ averaged over the images where the class is present}}; mPQ and bPQ are the
    NaN-means over tissues (a tissue without a valid image is skipped, as PanNuke's run.py).
    """
    n = len(true_inst)
    if not (len(true_type) == len(pred_inst) == len(pred_type) == len(tissues) == n):
        raise HoverNetError("pannuke_pq: give one instance map, type map and tissue per image")
    class_ids = [int(c) for c in class_ids]
    class_pq, bpq = [], []
    for i in range(n):
        ti, tt = _check_pair(true_inst[i], true_type[i], f"true image {i}")
        pi, pt = _check_pair(pred_inst[i], pred_type[i], f"pred image {i}")
        values, b = pannuke_image(
            class_channels(ti, tt, class_ids), class_channels(pi, pt, class_ids), match_iou
        )
        class_pq.append(values)
        bpq.append(b)
    out = pannuke_summary(class_pq, bpq, tissues, class_ids)
    del out["image_mpq"]
    return out


def pannuke_folds(fold_results: Sequence[dict]) -> dict[str, float]:
    """Mean and standard deviation (population, ddof=0) of mPQ and bPQ over folds."""
    mpqs = np.array([r["mpq"] for r in fold_results], dtype=float)
    bpqs = np.array([r["bpq"] for r in fold_results], dtype=float)
    return {
        "mpq": float(mpqs.mean()),
        "mpq_std": float(mpqs.std()),
        "bpq": float(bpqs.mean()),
        "bpq_std": float(bpqs.std()),
    }


def conic_pq_plus(
    true_inst: Sequence[np.ndarray],
    true_type: Sequence[np.ndarray],
    pred_inst: Sequence[np.ndarray],
    pred_type: Sequence[np.ndarray],
    class_ids: Sequence[int] = (1, 2, 3, 4, 5, 6),
    match_iou: float = 0.5,
) -> dict:
    """CoNIC multi-class PQ+: counts of each class summed over all images, then
    DQ = tp / (tp + fp/2 + fn/2 + 1e-6), SQ = iou_sum / (tp + 1e-6), PQ+ = DQ * SQ
    (CoNIC's epsilons; a class absent everywhere gives 0.0). mPQ+ = mean over `class_ids`.
    Returns {"mpq_plus", "per_class": {class: {"pq", "dq", "sq", "tp", "fp", "fn", "iou_sum"}}}.
    """
    n = len(true_inst)
    if not (len(true_type) == len(pred_inst) == len(pred_type) == n):
        raise HoverNetError("conic_pq_plus: give one instance map and type map per image")
    per_image = [
        per_class_pq(true_inst[i], true_type[i], pred_inst[i], pred_type[i], class_ids, match_iou)
        for i in range(n)
    ]
    return conic_summary(per_image, class_ids)


def conic_summary(per_image: Sequence[dict[int, PQCounts]], class_ids: Sequence[int]) -> dict:
    """CoNIC's mPQ+ from per-image `per_class_pq` counts: each class's counts summed over all
    images, then DQ / SQ / PQ+ with CoNIC's epsilons; mPQ+ = mean over `class_ids`."""
    totals = {int(c): PQCounts() for c in class_ids}
    for counts in per_image:
        for c in totals:
            totals[c] = totals[c] + counts.get(c, PQCounts())
    per_class = {}
    for c, cnt in totals.items():
        dq, sq, pq = cnt.dq_sq_pq(eps=1.0e-6)
        per_class[c] = {
            "pq": pq,
            "dq": dq,
            "sq": sq,
            "tp": cnt.tp,
            "fp": cnt.fp,
            "fn": cnt.fn,
            "iou_sum": cnt.iou_sum,
        }
    mean = float(np.mean([v["pq"] for v in per_class.values()])) if per_class else float("nan")
    return {"mpq_plus": mean, "per_class": per_class}
