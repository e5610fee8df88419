"""hovernet.metrics against the original's numbers (../shared/reference/golden.json), against a
straightforward per-instance implementation, and against the cellseg-metrics package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import DATA, REFERENCE
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import expand_labels, find_boundaries

from hovernet.errors import HoverNetError
from hovernet.metrics import (
    aji,
    aji_plus,
    conic_pq_plus,
    detection_stats,
    dice,
    instance_centroids,
    instance_stats,
    mpq,
    pair_coordinates,
    pannuke_folds,
    pannuke_pq,
    panoptic_quality,
    per_class_pq,
    pool_instance_stats,
    radius_pixels,
    type_stats,
)

GOLDEN = json.loads((REFERENCE / "golden.json").read_text())["metrics"]
INSTANCE_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


def untyped_case(i: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(REFERENCE / f"postproc_untyped_{i}.npz")
    return z["true_inst"], z["pred_inst"]


def type_inputs() -> list[list[np.ndarray]]:
    z = np.load(REFERENCE / "type_stats_inputs.npz")
    keys = ("true_centroid", "true_type", "pred_centroid", "pred_type")
    return [[z[f"{k}_{i}"] for i in range(16)] for k in keys]


# ---------------------------------------------------------------- exactness vs the original
@pytest.mark.parametrize("case", [0, 1, 2])
def test_instance_metrics_match_golden(case):
    true, pred = untyped_case(case)
    expected = GOLDEN[f"untyped_{case}"]
    stats = instance_stats(true, pred)
    for key in INSTANCE_KEYS:
        assert getattr(stats, key) == pytest.approx(expected[key], abs=1e-6), key
    # the single-metric functions give the same numbers
    assert dice(true, pred) == pytest.approx(expected["dice"], abs=1e-6)
    assert aji(true, pred) == pytest.approx(expected["aji"], abs=1e-6)
    assert aji_plus(true, pred) == pytest.approx(expected["aji_plus"], abs=1e-6)
    dq, sq, pq = panoptic_quality(true, pred)
    assert (dq, sq, pq) == pytest.approx((expected["dq"], expected["sq"], expected["pq"]), abs=1e-6)


def test_ids_need_not_be_contiguous():
    true, pred = untyped_case(0)
    # order-preserving gaps and a large offset: the original remaps to 1..N in the same order
    gapped = np.where(pred > 0, pred.astype(np.int64) * 7 + 100_000, 0)
    sparse = np.where(true > 0, true.astype(np.int64) * 10**12, 0)  # forces the np.unique path
    a, b = instance_stats(true, pred), instance_stats(sparse, gapped)
    for key in INSTANCE_KEYS:
        assert getattr(b, key) == pytest.approx(GOLDEN["untyped_0"][key], abs=1e-6)
        assert getattr(a, key) == getattr(b, key)


def test_type_stats_match_golden():
    expected = GOLDEN["type_stats"]
    s = type_stats(*type_inputs(), radius=12)
    assert s.f1_d == pytest.approx(expected["f1_d"], abs=1e-5)
    assert s.acc == pytest.approx(expected["acc"], abs=1e-5)
    assert sorted(s.f1_type) == [1, 2, 3, 4]
    for t, v in expected["f1_type"].items():
        assert s.f1_type[int(t)] == pytest.approx(v, abs=1e-5)
    assert s.as_dict()["f1_type"].keys() == expected["f1_type"].keys()


def test_pair_coordinates_case0_counts():
    true_xy, _, pred_xy, _ = (lst[0] for lst in type_inputs())
    pairs, un_true, un_pred = pair_coordinates(true_xy, pred_xy, 12)
    expected = GOLDEN["pair_coordinates_case0"]
    assert (len(pairs), len(un_true), len(un_pred)) == (
        expected["paired"],
        expected["unpaired_true"],
        expected["unpaired_pred"],
    )
    assert len(set(pairs[:, 0])) == len(pairs) and len(set(pairs[:, 1])) == len(pairs)
    dist = np.linalg.norm(true_xy[pairs[:, 0]] - pred_xy[pairs[:, 1]], axis=1)
    assert dist.max() <= 12


def test_type_stats_from_label_maps_match_golden():
    """Centroids and majority types computed from the maps give the original's numbers."""
    lists = [[], [], [], []]
    for i in range(16):
        z = np.load(REFERENCE / f"postproc_typed_{i}.npz")
        _, txy, tt = instance_centroids(z["true_inst"], z["true_type"])
        _, pxy, pt = instance_centroids(z["pred_inst"], z["pred_map"][..., 0].astype(np.int64))
        for lst, value in zip(lists, (txy, tt, pxy, pt), strict=True):
            lst.append(value)
    s = type_stats(*lists)
    assert s.f1_d == pytest.approx(GOLDEN["type_stats"]["f1_d"], abs=1e-5)
    assert s.acc == pytest.approx(GOLDEN["type_stats"]["acc"], abs=1e-5)


def test_radius_in_microns():
    assert radius_pixels(3.0, mpp=0.25) == pytest.approx(12.0)
    assert radius_pixels(12.0) == 12.0
    true = np.array([[10.0, 10.0]])
    pred = np.array([[10.0, 21.0]])  # 11 px apart
    assert detection_stats(true, pred, radius_pixels(3.0, mpp=0.25)).paired == 1
    assert detection_stats(true, pred, radius_pixels(2.5, mpp=0.25)).paired == 0
    with pytest.raises(HoverNetError, match="mpp"):
        radius_pixels(3.0, mpp=0)


def test_type_f1_weights_by_hand():
    # 3 true (types 1, 1, 2), 3 pred; pairs: (1->1), (1->2); one unpaired true of type 2,
    # one unpaired pred of type 1
    true_xy = np.array([[0, 0], [50, 50], [100, 100]], float)
    pred_xy = np.array([[1, 0], [50, 51], [200, 200]], float)
    s = type_stats([true_xy], [np.array([1, 1, 2])], [pred_xy], [np.array([1, 2, 1])])
    assert (s.paired, s.unpaired_true, s.unpaired_pred) == (2, 1, 1)
    assert s.f1_d == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s.acc == pytest.approx(0.5)
    # type 1: tp_dt=1, fn_dt=1 (true 1 -> pred 2), fp_d=1 -> 2 / (2 + 2*1 + 1)
    assert s.f1_type[1] == pytest.approx(2 / 5)
    # type 2: fp_dt=1 (true 1 -> pred 2), fn_d=1 -> 0 / (2 + 1)
    assert s.f1_type[2] == 0.0


# ---------------------------------------------------------------- empty inputs
def test_empty_maps_have_documented_values():
    empty = np.zeros((32, 32), np.int32)
    one = empty.copy()
    one[4:10, 4:10] = 3
    both = instance_stats(empty, empty)
    assert all(getattr(both, k) == 1.0 for k in INSTANCE_KEYS)
    for true, pred in ((empty, one), (one, empty)):
        s = instance_stats(true, pred)
        assert all(getattr(s, k) == 0.0 for k in INSTANCE_KEYS)
    assert dice(empty, empty) == 1.0 and aji(one, empty) == 0.0
    assert pool_instance_stats([both])["pq"] == 1.0


def test_empty_centroids_have_documented_values():
    none = np.zeros((0, 2))
    some = np.array([[5.0, 5.0]])
    s = type_stats([none], [np.zeros(0)], [none], [np.zeros(0)], type_ids=[1])
    assert (s.f1_d, s.acc, s.f1_type[1]) == (1.0, 1.0, 1.0)
    s = type_stats([some], [np.array([1])], [none], [np.zeros(0)])
    assert (s.f1_d, s.acc, s.f1_type[1], s.unpaired_true) == (0.0, 0.0, 0.0, 1)
    # an image without nuclei does not disturb the pooled statistics (no phantom nucleus)
    xy, tt, pxy, pt = type_inputs()
    s = type_stats([*xy, none], [*tt, np.zeros(0)], [*pxy, none], [*pt, np.zeros(0)])
    assert s.f1_d == pytest.approx(GOLDEN["type_stats"]["f1_d"], abs=1e-5)


# ---------------------------------------------------------------- bad input
def test_bad_label_maps_raise_clear_errors():
    a = np.zeros((8, 8), np.int32)
    with pytest.raises(HoverNetError, match="shape"):
        instance_stats(a, np.zeros((8, 9), np.int32))
    with pytest.raises(HoverNetError, match="whole numbers"):
        instance_stats(a, np.full((8, 8), 0.5))
    with pytest.raises(HoverNetError, match=">= 0"):
        instance_stats(a, np.full((8, 8), -1))
    with pytest.raises(HoverNetError, match="2-D"):
        instance_stats(a, np.zeros((8, 8, 3), np.int32))
    # whole-number floats (MATLAB doubles) are accepted
    assert instance_stats(a.astype(float), a.astype(float)).pq == 1.0


# ---------------------------------------------------------------- multi-class protocols
def test_per_class_pq_conic_and_pannuke_on_consep_crops():
    cases = [np.load(REFERENCE / f"postproc_typed_{i}.npz") for i in range(6)]
    ti = [c["true_inst"] for c in cases]
    tt = [c["true_type"] for c in cases]
    pi = [c["pred_inst"] for c in cases]
    # per-pixel predicted type: the instance's majority type, as HoVer-Net assigns it
    pt = []
    for c in cases:
        ids, _, types = instance_centroids(c["pred_inst"], c["pred_map"][..., 0].astype(int))
        lut = np.zeros(int(c["pred_inst"].max()) + 1, np.int64)
        lut[ids] = types
        pt.append(lut[c["pred_inst"]])
    classes = (1, 2, 3, 4)
    per_image = [per_class_pq(*args, classes) for args in zip(ti, tt, pi, pt, strict=True)]
    # CoNIC: counts summed over images, then divided
    conic = conic_pq_plus(ti, tt, pi, pt, class_ids=classes)
    for c in classes:
        tot = sum(p[c].tp for p in per_image), sum(p[c].fp for p in per_image)
        fn = sum(p[c].fn for p in per_image)
        iou = sum(p[c].iou_sum for p in per_image)
        dq = tot[0] / (tot[0] + 0.5 * tot[1] + 0.5 * fn + 1e-6)
        assert conic["per_class"][c]["pq"] == pytest.approx(dq * iou / (tot[0] + 1e-6))
    assert conic["mpq_plus"] == pytest.approx(
        np.mean([v["pq"] for v in conic["per_class"].values()])
    )
    # per class, tp + fn = number of true nuclei of that class
    for p, inst, types in zip(per_image, ti, tt, strict=True):
        for c in classes:
            assert p[c].tp + p[c].fn == len(np.unique(inst[types == c]))
    # perfect prediction: every protocol gives 1
    perfect = pannuke_pq(ti, tt, ti, tt, ["colon"] * 3 + ["breast"] * 3, class_ids=classes)
    assert perfect["mpq"] == pytest.approx(1.0, abs=1e-5)
    assert perfect["bpq"] == pytest.approx(1.0, abs=1e-5)
    # PanNuke: tissue means, then the mean over tissues; classes absent from truth skipped
    fold = pannuke_pq(ti, tt, pi, pt, ["colon"] * 3 + ["breast"] * 3, class_ids=classes)
    img_mpq = [mpq(p) for p in per_image]
    expected = np.mean([np.mean(img_mpq[:3]), np.mean(img_mpq[3:])])
    assert fold["mpq"] == pytest.approx(expected)
    assert 0 < fold["mpq"] < fold["bpq"] < 1
    folds = pannuke_folds([fold, perfect, fold])
    assert folds["mpq"] == pytest.approx((2 * fold["mpq"] + perfect["mpq"]) / 3)
    assert folds["mpq_std"] > 0


# ---------------------------------------------------------------- per-instance reference
def reference_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Straightforward per-instance implementation of the same definitions (masks per id)."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [i for i in np.unique(pred) if i]
    t_masks = [true == i for i in t_ids]
    p_masks = [pred == i for i in p_ids]
    inter = np.array([[np.sum(t & p) for p in p_masks] for t in t_masks], float)
    union = np.array([[np.sum(t | p) for p in p_masks] for t in t_masks], float)
    iou_eps = inter / (union + 1e-6)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    t_area = np.array([m.sum() for m in t_masks])
    p_area = np.array([m.sum() for m in p_masks])

    def aggregate(rows, cols):
        keep = iou_eps[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
        i, u = inter[rows, cols].sum(), union[rows, cols].sum()
        u += t_area[np.setdiff1d(range(len(t_ids)), rows)].sum()
        u += p_area[np.setdiff1d(range(len(p_ids)), cols)].sum()
        return i / u

    rows = np.arange(len(t_ids))
    out = {"aji": aggregate(rows, iou_eps.argmax(axis=1))}
    out["aji_plus"] = aggregate(*linear_sum_assignment(-iou_eps))
    paired = iou > 0.5
    tp = paired.sum()
    out["dq"] = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(t_ids) - tp))
    out["sq"] = iou[paired].sum() / (tp + 1e-6)
    out["pq"] = out["dq"] * out["sq"]
    out["dice"] = 2 * np.sum((true > 0) & (pred > 0)) / ((true > 0).sum() + (pred > 0).sum())
    return out


def perturbations(true: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Eroded, dilated, merged, split and dropped versions of an instance map."""
    rng = np.random.default_rng(seed)
    ids = np.unique(true)[1:]
    out = {
        "eroded": np.where(find_boundaries(true, mode="inner"), 0, true),
        "dilated": expand_labels(true, distance=2),
    }
    _, xy, _ = instance_centroids(true)
    lut = np.arange(int(true.max()) + 1)
    for k in rng.choice(len(ids), size=len(ids) // 4, replace=False):  # merge with nearest
        d = np.linalg.norm(xy - xy[k], axis=1)
        d[k] = np.inf
        lut[ids[k]] = ids[int(d.argmin())]
    out["merged"] = lut[true]
    split = true.astype(np.int64).copy()
    cols = np.indices(true.shape)[1]
    for k in range(0, len(ids), 3):
        right = (true == ids[k]) & (cols > xy[k, 0])
        split[right] = true.max() + 1 + k
    out["split"] = split
    drop = rng.choice(ids, size=len(ids) // 5, replace=False)
    out["dropped"] = np.where(np.isin(true, drop), 0, true)
    return out


def monuseg_crop(name: str, size: int = 256) -> np.ndarray:
    label = tifffile.imread(DATA / "monuseg" / "labels" / f"{name}_inst.tif")
    return label[:size, :size].astype(np.int32)


MONUSEG_TEST = json.loads((DATA / "monuseg" / "split.json").read_text())["test"]


@pytest.mark.parametrize("name", MONUSEG_TEST[:3])
def test_matches_per_instance_reference_on_perturbed_monuseg(name):
    true = monuseg_crop(name, 200)
    for kind, pred in perturbations(true).items():
        ours = instance_stats(true, pred)
        ref = reference_metrics(true, pred)
        for key, value in ref.items():
            assert getattr(ours, key) == pytest.approx(value, abs=1e-9), (kind, key)


# ---------------------------------------------------------------- cellseg-metrics cross-check
def test_cross_check_with_cellseg_metrics():
    cm = pytest.importorskip("cellseg_metrics")
    checked = 0
    for name in MONUSEG_TEST[:4]:
        true = monuseg_crop(name, 192)
        for kind, pred in perturbations(true, seed=1).items():
            ours = instance_stats(true, pred)
            theirs = cm.panoptic_quality(true, pred)
            # same pairing (IoU > 0.5) and formulas; they add eps=1e-8 to the denominators
            for key in ("dq", "sq", "pq"):
                assert ours.__getattribute__(key) == pytest.approx(theirs[key], abs=1e-6), kind
            tp, fp, fn = cm.get_stats((true > 0).astype(np.uint8), (pred > 0).astype(np.uint8))
            assert ours.dice == pytest.approx(cm.dice_coef(tp, fp, fn), abs=1e-6)
            # AJI: they pair each true nucleus with its largest *intersection* (all of them on a
            # tie), the original with its largest *IoU* (the lowest id on a tie). The two agree
            # unless those pick different predictions: "split" cuts nuclei in equal halves
            if kind != "split":
                assert ours.aji == pytest.approx(cm.aggregated_jaccard_index(true, pred), abs=1e-6)
            checked += 1
    assert checked == 20


def test_cellseg_metrics_known_differences():
    cm = pytest.importorskip("cellseg_metrics")
    # a 10x10 true nucleus; prediction A is huge and covers 60 of its pixels, B covers 40
    true = np.zeros((40, 40), np.int32)
    true[0:10, 0:10] = 1
    pred = np.zeros_like(true)
    pred[0:6, 0:40] = 2  # A: 240 px, 60 inside the nucleus
    pred[6:10, 0:10] = 3  # B: 40 px, all inside
    pred[20:40, 0:40] = 2
    area_a = int((pred == 2).sum())
    # original AJI: highest IoU -> B (40/100 > 60/area_a); A is unpaired and adds its area
    assert aji(true, pred) == pytest.approx(40 / (100 + area_a))
    # cellseg-metrics: highest intersection -> A; B unpaired
    assert cm.aggregated_jaccard_index(true, pred) == pytest.approx(60 / (area_a + 40 + 40))
    # empty truth and prediction: 1.0 here (documented), 0.0 there
    # a tie: two halves of 50 px each; the original takes the lower id only
    halves = np.where(true == 1, 4, 0)
    halves[0:10, 5:10] = 5
    assert aji(true, halves) == pytest.approx(50 / (100 + 50))
    assert cm.aggregated_jaccard_index(true, halves) == pytest.approx(100 / 200)
    empty = np.zeros((8, 8), np.int32)
    assert instance_stats(empty, empty).pq == 1.0
    assert cm.panoptic_quality(empty, empty)["pq"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", MONUSEG_TEST)
def test_cross_check_with_cellseg_metrics_full_test_split(name):
    """Every full 1000 x 1000 MoNuSeg test image, all five perturbations (about 15 s each)."""
    cm = pytest.importorskip("cellseg_metrics")
    true = monuseg_crop(name, 1000)
    for kind, pred in perturbations(true, seed=2).items():
        ours = instance_stats(true, pred)
        theirs = cm.panoptic_quality(true, pred)
        for key in ("dq", "sq", "pq"):
            assert getattr(ours, key) == pytest.approx(theirs[key], abs=1e-6), (kind, key)
        if kind != "split":
            assert ours.aji == pytest.approx(cm.aggregated_jaccard_index(true, pred), abs=1e-6)
