"""Instance segmentation metrics of one image pair: Dice, AJI, AJI+, DQ, SQ, PQ.

Definitions follow the original HoVer-Net `metrics/stats_utils.py` (`get_dice_1`,
`get_fast_aji`, `get_fast_aji_plus`, `get_fast_pq`) and reproduce its numbers to 1e-6
(tests/test_metrics.py checks them against ../shared/reference/golden.json). Ids need not be
contiguous: the contingency table is indexed by the sorted ids, which is exactly the order the
original's `remap_label` gives.

Empty maps (documented in docs/metrics.md): when truth and prediction are both empty every
metric is 1.0 (nothing to find, nothing found); when only one is empty every metric is 0.0.
The original divides 0 by 0 there (NaN or ZeroDivisionError).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from hovernet.metrics.overlap import Overlap, overlap, unique_pairing

# the original adds this to the union when it ranks pairs for AJI/AJI+ and to tp in SQ
_EPS = 1.0e-6


def _ratio(num: float, den: float) -> float:
    """num / den, with 0 / 0 = 1.0 (used only where 0 / 0 means "both maps empty")."""
    return float(num / den) if den else 1.0


def _aji_score(ov: Overlap) -> np.ndarray:
    # the original ranks pairs by inter / (union + 1e-6); keep it for identical tie-breaking
    return ov.inter / (ov.union + _EPS)


def aji_terms(ov: Overlap) -> tuple[int, int]:
    """(intersection, union) sums of AJI: each true nucleus takes the prediction of highest IoU,
    a prediction may serve several true nuclei; unpaired instances add their area to the union."""
    if len(ov.rows) == 0:
        return 0, int(ov.true_area.sum() + ov.pred_area.sum())
    order = np.lexsort((ov.cols, -_aji_score(ov), ov.rows))  # best IoU per row, then lowest id
    first = np.ones(len(order), dtype=bool)
    first[1:] = ov.rows[order][1:] != ov.rows[order][:-1]
    best = order[first]
    return _aji_sums(ov, best)


def _aji_sums(ov: Overlap, best: np.ndarray) -> tuple[int, int]:
    """AJI's (intersection, union) for the chosen pairs: every unpaired nucleus of either map
    adds its whole area to the union."""
    used_pred = np.zeros(ov.n_pred, dtype=bool)
    used_pred[ov.cols[best]] = True
    paired_true = np.zeros(ov.n_true, dtype=bool)
    paired_true[ov.rows[best]] = True
    inter = int(ov.inter[best].sum())
    union = int(ov.union[best].sum())
    union += int(ov.true_area[~paired_true].sum() + ov.pred_area[~used_pred].sum())
    return inter, union


def aji_plus_terms(ov: Overlap) -> tuple[int, int]:
    """(intersection, union) sums of AJI+: one-to-one pairing maximising the summed IoU."""
    best = unique_pairing(ov, _aji_score(ov))
    return _aji_sums(ov, best)


def pq_pairs(ov: Overlap, match_iou: float = 0.5) -> np.ndarray:
    """Positions of the PQ pairs: IoU > match_iou. At match_iou >= 0.5 such pairs are unique
    by construction; below it a maximal-IoU one-to-one pairing is taken first (as the original)."""
    if match_iou < 0:
        raise ValueError("match_iou must be >= 0")
    iou = ov.iou
    if match_iou >= 0.5:
        return np.flatnonzero(iou > match_iou)
    best = unique_pairing(ov, iou)
    return best[iou[best] > match_iou]


@dataclass(frozen=True)
class InstanceStats:
    """All instance metrics of one image pair, with the sums they are made of (for pooling)."""

    dice: float
    aji: float
    aji_plus: float
    dq: float
    sq: float
    pq: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    iou_sum: float
    fg_inter: int  # foreground pixels in both maps
    fg_total: int  # foreground pixels of truth + foreground pixels of prediction
    aji_inter: int
    aji_union: int
    aji_plus_inter: int
    aji_plus_union: int

    def as_dict(self) -> dict:
        return asdict(self)


def _dq_sq(tp: int, fp: int, fn: int, iou_sum: float) -> tuple[float, float]:
    if tp + fp + fn == 0:
        return 1.0, 1.0  # both empty
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / (tp + _EPS)
    return float(dq), float(sq)


def instance_stats(true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> InstanceStats:
    """Dice, AJI, AJI+, DQ, SQ, PQ of `pred` against `true` (2-D instance maps, 0 = background)
    from a single contingency table."""
    ov = overlap(true, pred)
    fg_inter = int(ov.inter.sum())
    fg_total = int(ov.true_area.sum() + ov.pred_area.sum())
    aji_i, aji_u = aji_terms(ov)
    ajp_i, ajp_u = aji_plus_terms(ov)
    pairs = pq_pairs(ov, match_iou)
    tp = len(pairs)
    fp, fn = ov.n_pred - tp, ov.n_true - tp
    iou_sum = float(ov.iou[pairs].sum())
    dq, sq = _dq_sq(tp, fp, fn, iou_sum)
    return InstanceStats(
        dice=_ratio(2 * fg_inter, fg_total),
        aji=_ratio(aji_i, aji_u),
        aji_plus=_ratio(ajp_i, ajp_u),
        dq=dq,
        sq=sq,
        pq=dq * sq,
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=tp,
        fp=fp,
        fn=fn,
        iou_sum=iou_sum,
        fg_inter=fg_inter,
        fg_total=fg_total,
        aji_inter=aji_i,
        aji_union=aji_u,
        aji_plus_inter=ajp_i,
        aji_plus_union=ajp_u,
    )


def dice(true: np.ndarray, pred: np.ndarray) -> float:
    """Binary Dice of the foregrounds: 2 |T & P| / (|T| + |P|) (the original's `get_dice_1`)."""
    t = np.asarray(true) > 0
    p = np.asarray(pred) > 0
    if t.shape != p.shape:
        overlap(true, pred)  # raises the shape error
    return _ratio(2 * int(np.count_nonzero(t & p)), int(t.sum()) + int(p.sum()))


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index as the MoNuSeg release (the original's `get_fast_aji`)."""
    return _ratio(*aji_terms(overlap(true, pred)))


def aji_plus(true: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (one-to-one pairing; the original's `get_fast_aji_plus`)."""
    return _ratio(*aji_plus_terms(overlap(true, pred)))


def panoptic_quality(
    true: np.ndarray, pred: np.ndarray, match_iou: float = 0.5
) -> tuple[float, float, float]:
    """(DQ, SQ, PQ) with pairs at IoU > match_iou (the original's `get_fast_pq`)."""
    s = instance_stats(true, pred, match_iou)
    return s.dq, s.sq, s.pq


def pool_instance_stats(stats: Iterable[InstanceStats]) -> dict[str, float]:
    """Dataset-level values from summed statistics (each image weighted by its content):
    Dice and AJI/AJI+ from summed pixel counts, DQ/SQ/PQ from summed tp/fp/fn/IoU."""
    stats = list(stats)
    tp, fp, fn = (sum(getattr(s, k) for s in stats) for k in ("tp", "fp", "fn"))
    dq, sq = _dq_sq(tp, fp, fn, sum(s.iou_sum for s in stats))
    return {
        "dice": _ratio(2 * sum(s.fg_inter for s in stats), sum(s.fg_total for s in stats)),
        "aji": _ratio(sum(s.aji_inter for s in stats), sum(s.aji_union for s in stats)),
        "aji_plus": _ratio(
            sum(s.aji_plus_inter for s in stats), sum(s.aji_plus_union for s in stats)
        ),
        "dq": dq,
        "sq": sq,
        "pq": dq * sq,
    }
