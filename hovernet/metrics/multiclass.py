"""Per-class panoptic quality and the two dataset protocols built on it.

- `per_class_pq`: DQ/SQ/PQ of each nucleus class in one image; `mpq` averages it.
- `pannuke_pq` / `pannuke_folds`: the PanNuke protocol (Gamper et al. 2020): per image, PQ of
  each class whose truth is not empty, their mean (mPQ) and the class-agnostic PQ (bPQ);
  then the mean per tissue type, then over tissue types; finally over the 3 folds.
- `conic_pq_plus`: the CoNIC protocol (Graham et al. 2021): tp / fp / fn / summed IoU of each
  class are summed over all images before dividing (PQ+ per class), mPQ+ = their mean.

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


def _typed_instances(inst: np.ndarray, types: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """Class-agnostic instance map of the typed nuclei: one instance per (id, class) piece, as
    PanNuke's `binarize` of its per-class channels."""
    keep = (inst > 0) & np.isin(types, class_ids)
    n_types = int(types.max()) + 1 if types.size else 1
    return np.where(keep, inst.astype(np.int64) * n_types + types, 0)


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
    Returns {"mpq", "bpq", "per_tissue": {tissue: {"mpq", "bpq"}}, "per_class": {class: PQ
    averaged over the images where the class is present}}.
    """
    n = len(true_inst)
    if not (len(true_type) == len(pred_inst) == len(pred_type) == len(tissues) == n):
        raise HoverNetError("pannuke_pq: give one instance map, type map and tissue per image")
    class_ids = [int(c) for c in class_ids]
    img_mpq, img_bpq = [], []
    class_pq: dict[int, list[float]] = {c: [] for c in class_ids}
    for i in range(n):
        ti, tt = _check_pair(true_inst[i], true_type[i], f"true image {i}")
        pi, pt = _check_pair(pred_inst[i], pred_type[i], f"pred image {i}")
        counts = per_class_pq(ti, tt, pi, pt, class_ids, match_iou)
        values = []
        for c, cnt in counts.items():
            value = cnt.dq_sq_pq()[2] if cnt.tp + cnt.fn > 0 else float("nan")
            class_pq[c].append(value)
            values.append(value)
        img_mpq.append(_nanmean(values))
        binary = pq_counts(
            _typed_instances(ti, tt, class_ids), _typed_instances(pi, pt, class_ids), match_iou
        )
        img_bpq.append(binary.dq_sq_pq()[2] if binary.tp + binary.fn > 0 else float("nan"))
    per_tissue = {}
    for tissue in sorted(set(tissues)):
        idx = [i for i, t in enumerate(tissues) if t == tissue]
        per_tissue[tissue] = {
            "mpq": _nanmean([img_mpq[i] for i in idx]),
            "bpq": _nanmean([img_bpq[i] for i in idx]),
        }
    # PanNuke takes a plain mean over tissues: a tissue without any valid image gives NaN
    return {
        "mpq": float(np.mean([v["mpq"] for v in per_tissue.values()])) if per_tissue else np.nan,
        "bpq": float(np.mean([v["bpq"] for v in per_tissue.values()])) if per_tissue else np.nan,
        "per_tissue": per_tissue,
        "per_class": {c: _nanmean(v) for c, v in class_pq.items()},
    }


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
    totals = {int(c): PQCounts() for c in class_ids}
    for i in range(n):
        counts = per_class_pq(
            true_inst[i], true_type[i], pred_inst[i], pred_type[i], class_ids, match_iou
        )
        for c, cnt in counts.items():
            totals[c] = totals[c] + cnt
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
