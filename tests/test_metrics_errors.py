"""hovernet.metrics.errors: every PQ error gets one cause, consistent with PQ's own counts."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DATA

from hovernet.errors import HoverNetError
from hovernet.metrics import instance_stats
from hovernet.metrics.errors import (
    FN_CAUSES,
    FP_CAUSES,
    PAIRED,
    area_groups,
    error_breakdown,
    recall_by,
)


def _box(m, i, y0, y1, x0, x1):
    m[y0:y1, x0:x1] = i


def scene():
    """One case of every cause: (truth, prediction)."""
    t = np.zeros((40, 120), np.int32)
    p = np.zeros_like(t)
    _box(t, 1, 2, 12, 2, 12), _box(p, 1, 2, 12, 2, 12)  # found
    _box(t, 2, 2, 12, 20, 30)  # missed
    _box(t, 3, 20, 30, 2, 10), _box(t, 4, 20, 30, 10, 18), _box(p, 2, 20, 30, 2, 18)  # merged
    _box(t, 5, 2, 12, 40, 60), _box(p, 3, 2, 12, 40, 50), _box(p, 4, 2, 12, 50, 60)  # split
    _box(t, 6, 20, 24, 40, 44), _box(p, 5, 18, 28, 38, 48)  # outline: prediction too big
    _box(p, 6, 30, 38, 100, 110)  # spurious
    _box(t, 7, 2, 20, 80, 100), _box(p, 7, 8, 12, 88, 92)  # outline: prediction too small
    return t, p


def test_each_error_gets_its_cause():
    t, p = scene()
    b = error_breakdown(t, p)
    fn = [PAIRED, *(FN_CAUSES.index(c) for c in ("missed", "merged", "merged", "split"))]
    fn += [FN_CAUSES.index("outline")] * 2
    np.testing.assert_array_equal(b.true_cause, fn)
    fp = [PAIRED, FP_CAUSES.index("merged"), *[FP_CAUSES.index("split")] * 2]
    fp += [FP_CAUSES.index(c) for c in ("outline", "spurious", "outline")]
    np.testing.assert_array_equal(b.pred_cause, fp)
    c = b.counts()
    assert (c["tp"], c["fn"], c["fp"]) == (1, 6, 6)
    assert (c["fn_missed"], c["fn_merged"], c["fn_split"], c["fn_outline"]) == (1, 2, 1, 2)
    assert (c["fp_spurious"], c["fp_split"], c["fp_merged"], c["fp_outline"]) == (1, 2, 1, 2)


def test_swapping_truth_and_prediction_swaps_the_causes():
    t, p = scene()
    a, b = error_breakdown(t, p), error_breakdown(p, t)
    np.testing.assert_array_equal(a.true_cause, b.pred_cause)
    np.testing.assert_array_equal(a.pred_cause, b.true_cause)


def test_empty_sides():
    t, _ = scene()
    none = np.zeros_like(t)
    c = error_breakdown(t, none).counts()
    assert c["fn"] == c["fn_missed"] == 7 and c["n_pred"] == c["fp"] == 0
    c = error_breakdown(none, t).counts()
    assert c["fp"] == c["fp_spurious"] == 7 and c["n_true"] == 0
    assert error_breakdown(none, none).counts()["tp"] == 0


def _degrade(true: np.ndarray, rng) -> np.ndarray:
    """A plausible bad prediction: some nuclei dropped, neighbours merged, outlines grown."""
    ids = np.unique(true)[1:]
    pred = true.copy()
    pred[np.isin(pred, rng.choice(ids, len(ids) // 5, replace=False))] = 0
    for a, b in zip(ids[::7], ids[1::7], strict=False):
        pred[pred == b] = a
    grow = np.zeros_like(pred)
    grow[1:] = pred[:-1]
    pred = np.where(pred == 0, grow, pred)
    pred[5:9, 5:9] = ids.max() + 1  # and one spurious blob
    return pred


@pytest.mark.parametrize("name", ["test_1_003", "test_4_010"])
def test_counts_agree_with_pq_on_real_labels(name):
    labels = DATA / "consep_patches/labels"
    true = tifffile.imread(labels / f"{name}_inst.tif").astype(np.int32)
    types = tifffile.imread(labels / f"{name}_type.tif")
    pred = _degrade(true, np.random.default_rng(0))
    b = error_breakdown(true, pred, types)
    c, s = b.counts(), instance_stats(true, pred)
    assert (c["tp"], c["fn"], c["fp"], c["n_true"], c["n_pred"]) == (
        s.tp,
        s.fn,
        s.fp,
        s.n_true,
        s.n_pred,
    )
    assert c["fn"] == sum(c[f"fn_{k}"] for k in FN_CAUSES) and c["fn_merged"] > 0
    assert c["fp"] == sum(c[f"fp_{k}"] for k in FP_CAUSES) and c["fp_spurious"] >= 1
    ids = np.unique(true)[1:]
    for k in (0, len(ids) // 2, len(ids) - 1):
        mask = true == ids[k]
        assert b.true_area[k] == mask.sum()
        assert b.true_type[k] == np.bincount(types[mask]).argmax()
        rows, cols = np.nonzero(mask)
        edge = rows.min() == 0 or cols.min() == 0 or rows.max() == 255 or cols.max() == 255
        assert b.true_border[k] == edge


def test_recall_by_area_bins():
    groups, labels = area_groups(np.array([3, 80, 81, 200, 5000]), [80, 160])
    assert labels == ["0-80", "80-160", "160-inf"]
    np.testing.assert_array_equal(groups, [0, 1, 1, 2, 2])
    rows = recall_by(groups, np.array([True, False, True, True, False]), labels)
    assert [r["n_true"] for r in rows] == [1, 2, 2]
    assert [r["recall"] for r in rows] == [1.0, 0.5, 0.5]
    assert recall_by(groups, groups > 9, ["a", "b", "c", "d"])[3] == {
        "group": "d",
        "n_true": 0,
        "tp": 0,
        "recall": None,
    }
    with pytest.raises(HoverNetError, match="positive and increasing"):
        area_groups(np.ones(2), [10, 5])


def test_refusals():
    t, p = scene()
    with pytest.raises(HoverNetError, match="cover"):
        error_breakdown(t, p, cover=0)
    with pytest.raises(HoverNetError, match="type map of the same image"):
        error_breakdown(t, p, np.zeros((3, 3), np.uint8))
