"""Why a segmentation loses PQ: every error of PQ's pairing put down to one cause.

PQ pairs a true and a predicted nucleus when their IoU is above `match_iou` (0.5); the unpaired
true nuclei are its false negatives, the unpaired predictions its false positives. A score says
how many there are; this module says why. Each unpaired nucleus gets exactly one cause, from
its pixels' overlap with the other side. "X holds Y": more than `cover` (0.5 by default) of Y's
pixels lie in X. In order of precedence:

false negatives (true nuclei)             false positives (predictions)
- missed: at most `cover` of it lies on   - spurious: at most `cover` of it lies on
  predictions and it holds none             true nuclei and it holds none
- merged: its main prediction holds       - split: its main true nucleus holds another
  another true nucleus                      prediction (it is a fragment)
- split: it holds two or more             - merged: it holds two or more true nuclei
  predictions (it was cut into pieces)
- outline: one prediction over it         - outline: over one true nucleus, IoU
  alone, IoU <= match_iou (too big/small)   <= match_iou (too big or too small)

The main prediction of a nucleus is the one sharing the most pixels with it (ties: the lower
id). Recall (PQ's true positives over true nuclei) is also split by nucleus area, by whether the
nucleus touches the image border (cut by the crop), and by type. Pure NumPy; counts are pooled
over images by adding them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.metrics.detection import instance_centroids
from hovernet.metrics.instance import pq_pairs
from hovernet.metrics.overlap import Overlap, as_label_map, overlap

FN_CAUSES = ("missed", "merged", "split", "outline")
FP_CAUSES = ("spurious", "split", "merged", "outline")
PAIRED = -1  # cause code of a nucleus in a PQ pair


@dataclass(frozen=True)
class ErrorBreakdown:
    """Per-nucleus causes of one image pair.

    `true_cause` / `pred_cause`: PAIRED, or an index into FN_CAUSES / FP_CAUSES. `true_area`
    in pixels; `true_border`: the nucleus touches the image edge; `true_type`: its type by the
    original's majority vote (`instance_centroids`; 0 where no type map was given)."""

    true_cause: np.ndarray
    pred_cause: np.ndarray
    true_area: np.ndarray
    true_border: np.ndarray
    true_type: np.ndarray

    def counts(self) -> dict[str, int]:
        """tp, fn, fp and the number of each cause (fn_missed, ..., fp_outline)."""
        out = {
            "n_true": len(self.true_cause),
            "n_pred": len(self.pred_cause),
            "tp": int((self.true_cause == PAIRED).sum()),
            "fn": int((self.true_cause != PAIRED).sum()),
            "fp": int((self.pred_cause != PAIRED).sum()),
        }
        for prefix, causes, codes in (
            ("fn", FN_CAUSES, self.true_cause),
            ("fp", FP_CAUSES, self.pred_cause),
        ):
            for k, cause in enumerate(causes):
                out[f"{prefix}_{cause}"] = int((codes == k).sum())
        return out


def _causes(ov: Overlap, paired: np.ndarray, cover: float, side: int) -> np.ndarray:
    """Cause codes of one side's nuclei (side 0: true, the rows; 1: predictions, the columns):
    PAIRED, 0 nothing there, 1 main partner holds another, 2 holds several, 3 outline.
    "X holds Y": more than `cover` of Y's pixels lie in X."""
    own, other = (ov.rows, ov.cols) if side == 0 else (ov.cols, ov.rows)
    own_area, other_area = (
        (ov.true_area, ov.pred_area) if side == 0 else (ov.pred_area, ov.true_area)
    )
    n = len(own_area)
    covered = np.bincount(own, weights=ov.inter, minlength=n) > cover * own_area
    held_by_other = ov.inter > cover * own_area[own]  # the partner holds this nucleus
    holds_other = ov.inter > cover * other_area[other]  # this nucleus holds the partner
    n_held = np.bincount(own[holds_other], minlength=n)
    # main partner: the most shared pixels, then the lowest partner index
    order = np.lexsort((other, -ov.inter, own))
    first = order[np.r_[True, own[order][1:] != own[order][:-1]]] if len(order) else order
    main = np.zeros(n, dtype=np.int64)
    main_holds_self = np.zeros(n, bool)
    main[own[first]] = other[first]
    main_holds_self[own[first]] = held_by_other[first]
    partner_holds = np.bincount(other[held_by_other], minlength=max(len(other_area), 1))
    shares_main = partner_holds[main] - main_holds_self >= 1
    codes = np.full(n, PAIRED, dtype=np.int64)
    codes[~paired] = 3
    codes[~paired & (n_held >= 2)] = 2
    codes[~paired & shares_main] = 1
    codes[~paired & ~covered & (n_held == 0)] = 0
    return codes


def _border(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Whether each id of `ids` (sorted) touches the first or last row or column."""
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return np.isin(ids, edge)


def error_breakdown(
    true: np.ndarray,
    pred: np.ndarray,
    true_types: np.ndarray | None = None,
    match_iou: float = 0.5,
    cover: float = 0.5,
) -> ErrorBreakdown:
    """The cause of every PQ error of `pred` against `true` (instance maps of one image), with
    each true nucleus' area, border contact and (from `true_types`, a per-pixel type map of the
    same shape) majority type."""
    if not 0.0 < cover <= 1.0:
        raise HoverNetError(f"cover must be in (0, 1], got {cover}")
    true = as_label_map(true, "true")
    ov = overlap(true, pred)
    pairs = pq_pairs(ov, match_iou)
    true_paired = np.zeros(ov.n_true, bool)
    pred_paired = np.zeros(ov.n_pred, bool)
    true_paired[ov.rows[pairs]] = True
    pred_paired[ov.cols[pairs]] = True
    kinds = np.zeros(ov.n_true, dtype=np.int64)
    if true_types is not None:
        if np.shape(true_types) != true.shape:
            raise HoverNetError(
                f"true types are {np.shape(true_types)} but the instance map is {true.shape}; "
                "give the type map of the same image"
            )
        kinds = instance_centroids(true, true_types)[2]
    return ErrorBreakdown(
        true_cause=_causes(ov, true_paired, cover, 0),
        pred_cause=_causes(ov, pred_paired, cover, 1),
        true_area=ov.true_area,
        true_border=_border(true, ov.true_ids),
        true_type=kinds,
    )


def recall_by(groups: np.ndarray, paired: np.ndarray, labels: Sequence) -> list[dict]:
    """Recall per group: for each k, the nuclei with groups == k (n_true, tp, recall; recall
    None for an empty group), labelled by labels[k]."""
    out = []
    for k, label in enumerate(labels):
        sel = groups == k
        n, tp = int(sel.sum()), int(paired[sel].sum())
        out.append({"group": label, "n_true": n, "tp": tp, "recall": tp / n if n else None})
    return out


def check_area_bins(edges: Sequence[float], name: str = "area bins") -> tuple[float, ...]:
    """The bin edges as floats if they are positive and increasing, else a HoverNetError
    naming `name` (the option that gave them)."""
    edges = tuple(float(e) for e in edges)
    if any(e <= 0 for e in edges) or any(b <= a for a, b in pairwise(edges)):
        raise HoverNetError(
            f"{name} must be positive and increasing, e.g. 5,10,20,40; got {list(edges)}"
        )
    return edges


def area_groups(area: np.ndarray, edges: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    """Group index of each area for increasing bin edges (a, b, ...): [0, a), [a, b), ...,
    [last, inf), and the bins' labels."""
    edges = check_area_bins(edges)
    bounds = [0.0, *edges, float("inf")]
    labels = [f"{lo:g}-{hi:g}" for lo, hi in pairwise(bounds)]
    return np.searchsorted(np.asarray(edges), np.asarray(area, float), side="right"), labels
