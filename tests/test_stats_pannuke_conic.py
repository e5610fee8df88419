"""PanNuke (mPQ / bPQ) and CoNIC (mPQ+, count R^2): the metric functions on hand-made cases,
the .npy dataset layouts, and `hovernet stats --mode pannuke / conic` end to end."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.io as sio
import tifffile
from conftest import DATA
from test_stats_cli import run_cli

from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.io.dataset_arrays import find_array_layout
from hovernet.io.labels import read_typed_map
from hovernet.metrics import (
    binarize_channels,
    channels_to_maps,
    class_counts,
    conic_pq_plus,
    count_r2,
    mpq,
    pannuke_image,
    pannuke_pq,
    pannuke_summary,
    per_class_pq,
)

EPS = 1e-6  # the SQ denominator's epsilon (tp + 1e-6), as the reference code


def box(shape, r0, r1, c0, c1, value=1, out=None):
    """A rectangle rows r0..r1-1, cols c0..c1-1 of `value` drawn on `out` (or zeros)."""
    out = np.zeros(shape, np.int64) if out is None else out
    out[r0:r1, c0:c1] = value
    return out


# ---------------------------------------------------------------- PanNuke by hand
def test_pannuke_image_by_hand():
    shape = (10, 10, 2)
    true = np.zeros(shape, np.int64)
    box(shape[:2], 0, 2, 0, 2, 1, true[..., 0])  # A, 4 px
    box(shape[:2], 5, 7, 5, 7, 2, true[..., 0])  # B, 4 px
    pred = np.zeros(shape, np.int64)
    box(shape[:2], 0, 2, 0, 3, 7, pred[..., 0])  # A' covers A: IoU 4 / 6
    box(shape[:2], 8, 10, 0, 2, 3, pred[..., 1])  # a class-2 nucleus; no class-2 truth
    values, bpq = pannuke_image(true, pred)
    # class 1: tp 1, fn 1: DQ = 1 / 1.5, SQ = (2/3) / (1 + eps)
    assert values[0] == pytest.approx((2 / 3) * (2 / 3) / (1 + EPS), rel=1e-12)
    # class 2 has no truth: skipped (NaN) although predicted
    assert np.isnan(values[1])
    # binary: A-A' pair, B missed, the class-2 nucleus a false positive: DQ = 1 / 2
    assert bpq == pytest.approx(0.5 * (2 / 3) / (1 + EPS), rel=1e-12)
    # no true nucleus at all: bPQ is skipped too
    assert np.isnan(pannuke_image(np.zeros(shape), pred)[1])


def test_pannuke_summary_by_hand():
    class_pq = [[0.5, np.nan], [np.nan, np.nan], [1.0, 0.0], [np.nan, np.nan]]
    bpq = [0.6, np.nan, 0.8, np.nan]
    tissues = ["Breast", "Breast", "Colon", "Liver"]
    s = pannuke_summary(class_pq, bpq, tissues, [1, 2])
    assert s["image_mpq"][:1] == [0.5] and np.isnan(s["image_mpq"][1])
    assert s["image_mpq"][2] == 0.5
    assert s["per_tissue"]["Breast"] == {"mpq": 0.5, "bpq": 0.6, "n_images": 2}
    assert s["per_tissue"]["Colon"] == {"mpq": 0.5, "bpq": 0.8, "n_images": 1}
    assert np.isnan(s["per_tissue"]["Liver"]["mpq"])  # no valid image: skipped by the mean
    assert s["mpq"] == pytest.approx(0.5) and s["bpq"] == pytest.approx(0.7)
    assert s["per_class"] == {1: pytest.approx(0.75), 2: 0.0}


def test_binarize_puts_later_channels_on_top_and_classes_use_raw_channels():
    ch = np.zeros((4, 6, 2), np.float64)  # PanNuke stores float64 ids
    ch[0:2, 0:4, 0] = 1
    ch[0:2, 2:4, 1] = 1  # overlaps the right half of channel 0's nucleus
    binary = binarize_channels(ch)
    assert len(np.unique(binary[binary > 0])) == 2
    assert binary[0, 0] != binary[0, 3] and binary[0, 0] == binary[1, 1]
    assert (binary[0:2, 2:4] == binary[0, 3]).all()
    inst, types = channels_to_maps(ch, [1, 2])
    assert (types[0:2, 0:2] == 1).all() and (types[0:2, 2:4] == 2).all() and types[3, 5] == 0
    values, bpq = pannuke_image(ch, ch)
    assert values == pytest.approx([1.0, 1.0], abs=1e-5) and bpq == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- CoNIC by hand
def test_conic_pools_counts_over_images_pannuke_skips_them():
    shape = (8, 8)
    t_inst = [box(shape, 0, 2, 0, 2), np.zeros(shape, np.int64)]
    t_type = [box(shape, 0, 2, 0, 2), np.zeros(shape, np.int64)]
    p_inst = [box(shape, 0, 2, 0, 2), box(shape, 4, 6, 4, 6)]  # a false positive in image 2
    p_type = [box(shape, 0, 2, 0, 2), box(shape, 4, 6, 4, 6)]
    res = conic_pq_plus(t_inst, t_type, p_inst, p_type, class_ids=(1, 2))
    c1 = res["per_class"][1]
    assert (c1["tp"], c1["fp"], c1["fn"]) == (1, 1, 0)
    # pooled: DQ = 1 / (1 + 0.5 + 1e-6), SQ = 1 / (1 + 1e-6); the mean of per-image PQ were 0.5
    assert c1["pq"] == pytest.approx(1 / (1.5 + EPS) / (1 + EPS), rel=1e-12)
    assert res["per_class"][2]["pq"] == 0.0  # absent everywhere: CoNIC's epsilons give 0
    assert res["mpq_plus"] == pytest.approx(c1["pq"] / 2)
    # PanNuke skips image 2 (no truth there): the false positive costs nothing
    assert pannuke_pq(t_inst, t_type, p_inst, p_type, ["x", "x"], (1, 2))["mpq"] == (
        pytest.approx(1.0, abs=1e-5)
    )


def test_count_r2_by_hand():
    t = [[1, 0], [3, 0], [5, 0]]
    p = [[2, 0], [3, 0], [4, 1]]
    r = count_r2(t, p)
    # class 1: 1 - (1 + 0 + 1) / (4 + 0 + 4); class 2: constant truth, missed -> 0.0
    assert r["per_class"] == [pytest.approx(0.75), 0.0]
    assert r["r2"] == pytest.approx(0.375)
    assert count_r2([[2], [2]], [[2], [2]])["r2"] == 1.0  # constant truth, exact
    assert count_r2([[0, 1], [2, 2]], [[1, 1], [1, 2]])["per_class"] == [
        pytest.approx(1 - 2 / 2),
        1.0,
    ]
    assert np.isnan(count_r2([[1, 2]], [[1, 2]])["r2"])  # one image: undefined
    with pytest.raises(HoverNetError, match="differ in shape"):
        count_r2([[1, 2]], [[1, 2, 3]])


def test_class_counts_in_the_central_crop():
    shape = (256, 256)
    inst = box(shape, 0, 10, 0, 10, 1)  # wholly in the 16 px border: not counted
    box(shape, 10, 21, 100, 111, 2, inst)  # rows 16..20 inside: counted
    box(shape, 100, 111, 100, 111, 3, inst)
    box(shape, 245, 256, 0, 11, 4, inst)  # bottom border
    types = np.where(inst > 0, 2, 0)
    types[inst == 1] = 1
    types[100:111, 100:108] = 3  # nucleus 3: 8 of 11 columns type 3, the rest type 1
    types[100:111, 108:111] = 1
    assert class_counts(inst, types, [1, 2, 3]).tolist() == [0, 1, 1]
    assert class_counts(inst, types, [1, 2, 3], crop=0).tolist() == [1, 2, 1]
    # crop 236: rows / columns 10..245; nucleus 4's top row (245) is inside, nucleus 1 is not
    assert class_counts(inst, types, [1, 2, 3], crop=236).tolist() == [0, 2, 1]


# ---------------------------------------------------------------- synthetic datasets
def pannuke_fold(n_extra: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Three 32 x 32 images (masks N x H x W x 6) and their predictions, see the test."""
    true = np.zeros((3 + n_extra, 32, 32, 6), np.float64)
    pred = np.zeros_like(true)
    true[0, 0:6, 0:6, 0] = 1
    true[0, 10:16, 10:16, 0] = 2
    true[0, 20:26, 0:6, 2] = 3
    pred[0] = true[0]  # image 0: perfect (classes 1 and 3)
    true[1, 4:10, 4:10, 1] = 5  # image 1: the class-2 nucleus missed, a class-4 one invented
    pred[1, 20:26, 20:26, 3] = 1
    true[2, 8:14, 8:14, 4] = 9  # image 2: right nucleus, wrong class (1 instead of 5)
    pred[2, 8:14, 8:14, 0] = 4
    true[..., 5] = (true[..., :5].sum(-1) == 0).astype(float)  # background channel
    pred[..., 5] = (pred[..., :5].sum(-1) == 0).astype(float)
    return true, pred, ["Breast", "Breast", "Colon"] + ["Colon"] * n_extra


def write_pannuke(folder, masks, tissues=None, images=True):
    folder.mkdir(parents=True)
    np.save(folder / "masks.npy", masks)
    if tissues is not None:
        np.save(folder / "types.npy", np.array(tissues))
    if images:
        np.save(folder / "images.npy", np.zeros((*masks.shape[:3], 3), np.uint8))
    return folder


def test_pannuke_mode_on_npy_folds_by_hand(tmp_path, capsys):
    true, pred, tissues = pannuke_fold()
    t = write_pannuke(tmp_path / "true", true, tissues)
    p = write_pannuke(tmp_path / "pred", pred, images=False)
    out = tmp_path / "res" / "pannuke.json"
    code, stdout, err = run_cli(
        ["--mode", "pannuke", "--pred_dir", p, "--true_dir", t, "--out", out], capsys
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    # per image: mPQ 1, 0, 0 and bPQ 1, 0, 1; Breast = mean(1, 0), Colon = image 2
    ok = pytest.approx(1.0, abs=1e-5)
    assert [res["per_image"][n]["mpq"] for n in "012"] == [ok, 0.0, 0.0]
    assert [res["per_image"][n]["bpq"] for n in "012"] == [ok, 0.0, ok]
    assert res["per_image"]["2"]["pq"] == {"1": None, "2": None, "3": None, "4": None, "5": 0.0}
    assert res["per_tissue"]["Breast"] == {
        "mpq": pytest.approx(0.5, abs=1e-5),
        "bpq": pytest.approx(0.5, abs=1e-5),
        "n_images": 2,
    }
    assert res["mpq"] == pytest.approx((0.5 + 0.0) / 2, abs=1e-5)
    assert res["bpq"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-5)
    assert {c: v["pq"] for c, v in res["per_class"].items()} == {
        "1": ok,
        "2": 0.0,
        "3": ok,
        "4": None,
        "5": 0.0,
    }
    assert res["class_names"]["5"] == "epithelial" and res["n_images"] == 3
    assert "mPQ=0.25000" in stdout and "bPQ=0.75000" in stdout and "4 dead" in stdout
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["image"] for r in rows] == ["0", "1", "2", "pannuke"]
    assert rows[2]["pq_1"] == "" and float(rows[3]["bpq"]) == pytest.approx(0.75, abs=1e-5)
    # the same as the API's pannuke_pq on the maps of the arrays
    maps = [channels_to_maps(a[..., :5], range(1, 6)) for a in (*true, *pred)]
    api = pannuke_pq(
        [m[0] for m in maps[:3]],
        [m[1] for m in maps[:3]],
        [m[0] for m in maps[3:]],
        [m[1] for m in maps[3:]],
        tissues,
    )
    assert api["mpq"] == pytest.approx(res["mpq"]) and api["bpq"] == pytest.approx(res["bpq"])


def test_pannuke_truth_with_a_folder_of_predictions_named_by_index(tmp_path, capsys):
    true, _, tissues = pannuke_fold(n_extra=8)  # 11 images: names 00 .. 10
    t = write_pannuke(tmp_path / "true", true, tissues)
    p = tmp_path / "pred"
    p.mkdir()
    for i in range(11):  # perfect predictions as H x W x 2 [instance, type] files 0 .. 10
        inst, types = channels_to_maps(true[i, ..., :5], range(1, 6))
        np.save(p / f"{i}.npy", np.stack([inst, types], axis=-1))
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        ["--mode", "pannuke", "--pred_dir", p, "--true_dir", t, "--out", out], capsys
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    assert sorted(res["per_image"]) == [f"{i:02d}" for i in range(11)]
    assert res["mpq"] == pytest.approx(1.0, abs=1e-5) and res["per_image"]["05"]["mpq"] is None


def write_conic(folder, labels, counts=None, header=None):
    folder.mkdir(parents=True)
    np.save(folder / "labels.npy", labels)
    if counts is not None:
        with open(folder / "counts.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([header, *counts])
    return folder


def conic_arrays() -> tuple[np.ndarray, np.ndarray]:
    true = np.zeros((3, 32, 32, 2), np.int32)
    box((32, 32), 0, 5, 0, 5, 1, true[0, ..., 0])  # image 0: one epithelial (2)
    box((32, 32), 0, 5, 0, 5, 2, true[0, ..., 1])
    for k, c0 in enumerate((0, 10, 20)):  # image 1: three lymphocytes (3)
        box((32, 32), 10, 15, c0, c0 + 5, k + 1, true[1, ..., 0])
        box((32, 32), 10, 15, c0, c0 + 5, 3, true[1, ..., 1])
    box((32, 32), 0, 5, 0, 5, 4, true[2, ..., 0])  # image 2: epithelial + connective (6)
    box((32, 32), 0, 5, 0, 5, 2, true[2, ..., 1])
    box((32, 32), 20, 25, 20, 25, 8, true[2, ..., 0])
    box((32, 32), 20, 25, 20, 25, 6, true[2, ..., 1])
    pred = true.copy()
    pred[1][true[1, ..., 0] == 3] = 0  # image 1: one lymphocyte missed
    return true, pred


def test_conic_mode_on_npy_arrays_by_hand(tmp_path, capsys):
    true, pred = conic_arrays()
    # truth counts from counts.csv (columns in another order; image 1 also has one plasma
    # cell the maps do not hold, to show the CSV is what is read)
    header = ["epithelial", "neutrophil", "lymphocyte", "plasma", "eosinophil", "connective"]
    counts = [[1, 0, 0, 0, 0, 0], [0, 0, 3, 1, 0, 0], [1, 0, 0, 0, 0, 1]]
    t = write_conic(tmp_path / "true", true, counts, header)
    p = write_conic(tmp_path / "pred", pred)
    out = tmp_path / "conic.json"
    code, stdout, err = run_cli(
        ["--mode", "conic", "--pred_dir", p, "--true_dir", t, "--out", out], capsys
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    pc = res["per_class"]
    # lymphocyte: tp 2, fn 1 pooled: DQ = 2 / (2.5 + 1e-6), SQ = 2 / (2 + 1e-6)
    assert pc["3"]["pq"] == pytest.approx(2 / (2.5 + EPS) * 2 / (2 + EPS), rel=1e-9)
    assert (pc["3"]["tp"], pc["3"]["fp"], pc["3"]["fn"]) == (2, 0, 1)
    assert pc["2"]["pq"] == pytest.approx(1.0, abs=1e-5) and pc["1"]["pq"] == 0.0
    expected_mpq = (1.0 + 0.8 + 1.0) / 6  # classes 1, 4, 5 are absent everywhere: 0
    assert res["mpq_plus"] == pytest.approx(expected_mpq, abs=1e-5)
    # R^2: lymphocyte t = 0, 3, 0 vs p = 0, 2, 0: 1 - 1 / 6; plasma t = 0, 1, 0 vs 0: -0.5
    r2 = {c: v["r2"] for c, v in pc.items()}
    assert r2 == {
        "1": 1.0,
        "2": 1.0,
        "3": pytest.approx(5 / 6),
        "4": pytest.approx(-0.5),
        "5": 1.0,
        "6": 1.0,
    }
    assert res["r2"] == pytest.approx((4 + 5 / 6 - 0.5) / 6)
    assert res["per_image"]["1"]["true_count"]["4"] == 1
    assert res["per_image"]["1"]["pred_count"]["3"] == 2
    assert res["per_image"]["1"]["pq"] == pytest.approx(2 / (2.5 + EPS) * 2 / (2 + EPS))
    assert res["counts_from"]["true"].endswith("counts.csv")
    assert res["counts_from"]["pred"].startswith("maps")
    assert "3 lymphocyte" in stdout and "mPQ+=0.46667" in stdout
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert rows[-1]["image"] == "total" and rows[-1]["fn_3"] == "1"
    # the API's conic_pq_plus on the same maps
    api = conic_pq_plus(
        list(true[..., 0]), list(true[..., 1]), list(pred[..., 0]), list(pred[..., 1])
    )
    assert api["mpq_plus"] == pytest.approx(res["mpq_plus"])


# ---------------------------------------------------------------- real data
def consep_case(tmp_path, n: int = 12):
    """CoNSeP crops as truth; predictions as tile mode's .mat (one type per nucleus), with
    class 1 ('other') predicted as 2 and every 7th nucleus dropped."""
    src = DATA / "consep_patches" / "labels"
    names = sorted(p.name[: -len("_inst.tif")] for p in src.glob("*_inst.tif"))
    names = names[: n // 2] + [m for m in names if m.startswith("test_11_")][: n // 2]
    true, pred = tmp_path / "true", tmp_path / "pred"
    true.mkdir()
    pred.mkdir()
    maps = []
    for name in names:
        inst = tifffile.imread(src / f"{name}_inst.tif").astype(np.int32)
        types = tifffile.imread(src / f"{name}_type.tif").astype(np.int32)
        tifffile.imwrite(true / f"{name}_inst.tif", inst)
        tifffile.imwrite(true / f"{name}_type.tif", types)
        ids = np.unique(inst[inst > 0])
        keep = ids[np.arange(len(ids)) % 7 != 3]
        p_inst = np.where(np.isin(inst, keep), inst, 0)
        lut = np.zeros(inst.max() + 1, np.int32)
        lut[inst.ravel()] = types.ravel()
        p_types = np.where(lut[keep] == 1, 2, lut[keep])
        sio.savemat(
            pred / f"{name}.mat",
            {"inst_map": p_inst, "inst_uid": keep[:, None], "inst_type": p_types[:, None]},
        )
        maps.append((inst, types, p_inst, np.where(p_inst > 0, np.where(types == 1, 2, types), 0)))
    return true, pred, names, maps


def test_consep_truth_against_a_perturbed_copy(tmp_path, capsys):
    true, pred, names, maps = consep_case(tmp_path)
    out = tmp_path / "p.json"
    code, _, err = run_cli(
        ["--mode", "pannuke", "--pred_dir", pred, "--true_dir", true, "--out", out], capsys
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["class_ids"] == [1, 2, 3, 4]  # the types present in the truth (tile 11: 'other')
    ti, tt, pi, pt = (list(m) for m in zip(*maps, strict=True))
    api = pannuke_pq(ti, tt, pi, pt, ["all"] * len(ti), class_ids=(1, 2, 3, 4))
    assert res["mpq"] == pytest.approx(api["mpq"]) and res["bpq"] == pytest.approx(api["bpq"])
    for c in "1234":
        assert res["per_class"][c]["pq"] == pytest.approx(api["per_class"][int(c)])
    assert res["per_class"]["1"]["pq"] == 0.0  # every 'other' nucleus predicted as class 2
    for name, args in zip(names, maps, strict=True):
        per_class = per_class_pq(*args, (1, 2, 3, 4))
        assert res["per_image"][name]["mpq"] == pytest.approx(mpq(per_class))
    # a dropped nucleus in 7 costs detection quality only: 0.8 < bPQ < 0.95
    assert 0.8 < res["bpq"] < 0.95
    out = tmp_path / "c.json"
    code, _, err = run_cli(
        ["--mode", "conic", "--pred_dir", pred, "--true_dir", true, "--out", out], capsys
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    api = conic_pq_plus(ti, tt, pi, pt, class_ids=(1, 2, 3, 4))
    assert res["mpq_plus"] == pytest.approx(api["mpq_plus"])
    for c in (1, 2, 3, 4):
        assert res["per_class"][str(c)]["tp"] == api["per_class"][c]["tp"]
    for name, (inst, types, _, _) in zip(names, maps, strict=True):
        counts = res["per_image"][name]
        assert (
            list(counts["true_count"].values()) == class_counts(inst, types, (1, 2, 3, 4)).tolist()
        )
        assert counts["pred_count"]["1"] == 0
    assert res["per_class"]["1"]["r2"] <= 0.0 < res["per_class"]["3"]["r2"] < 1.0


# ---------------------------------------------------------------- readers and bad input
def test_read_typed_map_of_mat_and_json(tmp_path):
    inst = box((6, 6), 0, 2, 0, 2, 4)
    box((6, 6), 3, 6, 3, 6, 9, inst)
    sio.savemat(
        tmp_path / "a.mat", {"inst_map": inst, "inst_uid": [[9], [4]], "inst_type": [[3], [1]]}
    )
    got_inst, got_types = read_typed_map(tmp_path / "a.mat")
    assert (got_types == np.where(inst == 9, 3, np.where(inst == 4, 1, 0))).all()
    sio.savemat(tmp_path / "b.mat", {"inst_map": inst, "inst_type": [[3], [1]]})
    with pytest.raises(HoverNetError, match="b.mat.*inst_uid"):
        read_typed_map(tmp_path / "b.mat")
    contour = [[1, 1], [4, 1], [4, 4], [1, 4]]  # x, y corners of a 4 x 4 square
    nuc = {"5": {"contour": contour, "centroid": [2.5, 2.5], "type": 2}}
    (tmp_path / "c.json").write_text(json.dumps({"mag": 40, "nuc": nuc}))
    got_inst, got_types = read_typed_map(tmp_path / "c.json", shape=(6, 6))
    assert (got_types[1:5, 1:5] == 2).all() and got_types.sum() == 2 * 16
    assert set(np.unique(got_inst)) == {0, 5}


def test_bad_pannuke_and_conic_arrays_name_the_file_and_shape(tmp_path, capsys):
    true, pred, tissues = pannuke_fold()
    bad = write_pannuke(tmp_path / "bad", true[..., :5], tissues)
    with pytest.raises(
        HoverNetError, match=r"bad/masks.npy: expected N x 256 x 256 x 6.*\(3, 32, 32, 5\)"
    ):
        find_array_layout(bad)
    short = write_pannuke(tmp_path / "short", true, tissues[:2])
    with pytest.raises(
        HoverNetError, match=r"short/types.npy: expected 3 tissue names \(shape \(3,\)\)"
    ):
        find_array_layout(short)
    np.save(short / "types.npy", np.array(tissues))
    np.save(short / "images.npy", np.zeros((3, 16, 16, 3), np.uint8))
    with pytest.raises(HoverNetError, match=r"images.npy: expected 3 x 32 x 32 x 3"):
        find_array_layout(short)
    np.save(tmp_path / "flat.npy", np.zeros((3, 32, 32), np.int32))
    with pytest.raises(HoverNetError, match=r"flat.npy: expected PanNuke masks"):
        find_array_layout(tmp_path / "flat.npy")
    labels, _ = conic_arrays()
    header = ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"]
    few = write_conic(tmp_path / "few", labels, [[0] * 6] * 2, header)
    with pytest.raises(HoverNetError, match=r"few/counts.csv: expected 3 rows"):
        find_array_layout(few)
    odd = write_conic(tmp_path / "odd", labels, [[0] * 6] * 3, [*header[:5], "macrophage"])
    with pytest.raises(HoverNetError, match=r"odd/counts.csv: column 'macrophage'"):
        find_array_layout(odd)
    # through the command: one line, exit 2, nothing written
    p = write_pannuke(tmp_path / "pred", pred, images=False)
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        ["--mode", "pannuke", "--pred_dir", p, "--true_dir", bad, "--out", out], capsys
    )
    assert code == 2 and "masks.npy" in err and "N x 256 x 256 x 6" in err and not out.exists()
    code, _, err = run_cli(
        ["--mode", "pannuke", "--pred_dir", p, "--true_dir", short.parent / "x", "--type-ids", "7"],
        capsys,
    )
    assert code == 2 and "does not exist" in err


def test_class_ids_warnings_and_wrong_mode_hints(tmp_path, capsys):
    true, pred, _ = pannuke_fold()
    t = write_pannuke(tmp_path / "true", true)  # no types.npy
    p = write_pannuke(tmp_path / "pred", pred, images=False)
    with pytest.warns(HoverNetWarning, match="no types.npy beside .*masks.npy"):
        code, stdout, _ = run_cli(["--mode", "pannuke", "--pred_dir", p, "--true_dir", t], capsys)
    assert code == 0 and "1 tissue(s)" in stdout
    code, _, err = run_cli(
        ["--mode", "pannuke", "--pred_dir", p, "--true_dir", t, "--type-ids", "1,7"], capsys
    )
    assert code == 2 and "--type-ids" in err and "[1, 2, 3, 4, 5]" in err
    with pytest.warns(HoverNetWarning, match="types.npy"):
        code, stdout, _ = run_cli(
            ["--mode", "pannuke", "--pred_dir", p, "--true_dir", t, "--type-ids", "1,3"], capsys
        )
    assert code == 0 and "mPQ=1.00000" in stdout  # images 1 and 2 hold neither class
    labels, _ = conic_arrays()
    c = write_conic(tmp_path / "conic", labels)
    code, _, err = run_cli(["--mode", "instance", "--pred_dir", c, "--true_dir", c], capsys)
    assert code == 2 and "labels.npy" in err and "--mode conic" in err
    code, _, err = run_cli(
        ["--mode", "conic", "--pred_dir", c, "--true_dir", c, "--count-crop", "-1"], capsys
    )
    assert code == 2 and "--count-crop" in err


def test_slide_mode_output_keeps_each_nucleus_class(tmp_path, capsys):
    """A slide's nucleus k (GeoJSON outline k) takes the type of row k of its CSV."""
    from test_stats_outputs import consep_map, write_slide_output, write_truth

    inst, types = consep_map()
    pred = tmp_path / "wsi_out"
    stored = write_slide_output(pred, inst, types, 1.0)
    stored_types = np.where(stored > 0, types, 0)
    write_truth(tmp_path / "truth", "slide", stored, stored_types)
    out = tmp_path / "p.json"
    args = ["--pred_dir", pred, "--true_dir", tmp_path / "truth", "--out", out]
    code, _, err = run_cli(["--mode", "pannuke", *args], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    present = [int(t) for t in np.unique(stored_types) if t]
    assert res["class_ids"] == present and len(present) >= 2
    for c in present:
        assert res["per_class"][str(c)]["pq"] == pytest.approx(1.0, abs=1e-5)
    with pytest.warns(HoverNetWarning, match="R\\^2 needs at least two images"):
        code, _, err = run_cli(["--mode", "conic", *args], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["mpq_plus"] == pytest.approx(1.0, abs=1e-5) and res["r2"] is None
    for c in present:
        n = len(np.unique(stored[(stored_types == c)]))
        assert res["per_class"][str(c)]["tp"] == n and res["per_class"][str(c)]["fp"] == 0
