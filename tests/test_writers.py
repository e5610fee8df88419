"""Writers: each file is read back and checked against the records and against the others."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import DATA, REFERENCE
from shapely.geometry import shape

from hovernet.errors import HoverNetError
from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.postprocess import instance_records, postprocess
from hovernet.io.overlay_files import write_overlay
from hovernet.io.writers import (
    UNTYPED_CLASS,
    write_csv,
    write_geojson,
    write_json,
    write_mat,
)

# postproc_typed_0 is CoNSeP patch test_10_000 (same nuclei as its label image)
COLOURS = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}


@pytest.fixture(scope="module")
def typed_case() -> dict:
    names = json.loads((DATA / "consep_patches" / "types.json").read_text())
    type_info = {int(k): (v, COLOURS[int(k)]) for k, v in names.items()}
    pred_map = np.load(REFERENCE / "postproc_typed_0.npz")["pred_map"]
    image = cv2.imread(str(DATA / "consep_patches" / "images" / "test_10_000.png"))
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    onehot = np.eye(5)[pred_map[..., 0].astype(int)]
    softmax = 0.8 * onehot + 0.04
    inst_map, nuclei = postprocess(pred_map, nr_types=5, type_softmax=softmax)
    return {
        "image": image,
        "inst_map": inst_map,
        "nuclei": nuclei,
        "type_info": type_info,
        "pred_map": pred_map,
    }


@pytest.fixture(scope="module")
def written(typed_case: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("out")
    c = typed_case
    paths = {
        "json": out / "json" / "img.json",
        "mat": out / "mat" / "img.mat",
        "geojson": out / "qupath" / "img.geojson",
        "csv": out / "csv" / "img.csv",
        "overlay": out / "overlay" / "img.png",
    }
    write_json(paths["json"], c["nuclei"], mag=40)
    write_mat(paths["mat"], c["inst_map"], c["nuclei"], raw_map=c["pred_map"])
    shapes = nucleus_measurements(c["inst_map"], c["nuclei"])
    write_geojson(paths["geojson"], c["nuclei"], c["type_info"], measurements=shapes)
    write_csv(paths["csv"], c["nuclei"], c["type_info"], shapes)
    write_overlay(paths["overlay"], c["image"], c["nuclei"], c["type_info"], draw_dot=True)
    return paths


def _csv_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_json_has_original_schema(typed_case: dict, written: dict) -> None:
    doc = json.loads(written["json"].read_text())
    assert doc["mag"] == 40
    nuclei = typed_case["nuclei"]
    assert [int(k) for k in doc["nuc"]] == list(nuclei)
    # the records equal the original's JSON for this case (ids identical, see test_postprocess)
    original = json.loads((REFERENCE / "postproc_typed_0.json").read_text())
    for key, rec in doc["nuc"].items():
        for field in ("bbox", "centroid", "contour", "type", "type_prob"):
            assert rec[field] == original[key][field]
        assert rec["type_probs"] == pytest.approx(nuclei[int(key)]["type_probs"])
        assert sum(rec["type_probs"]) == pytest.approx(1.0)


def test_mat_has_original_keys(typed_case: dict, written: dict) -> None:
    mat = scipy.io.loadmat(written["mat"])
    nuclei = typed_case["nuclei"]
    assert np.array_equal(mat["inst_map"], typed_case["inst_map"])
    assert mat["inst_uid"].shape == (len(nuclei), 1)
    assert mat["inst_uid"].ravel().tolist() == list(nuclei)
    assert mat["inst_type"].ravel().tolist() == [r["type"] for r in nuclei.values()]
    np.testing.assert_allclose(mat["inst_centroid"], [r["centroid"] for r in nuclei.values()])
    assert np.array_equal(mat["raw_map"], typed_case["pred_map"])


def test_geojson_is_valid_qupath_detections(typed_case: dict, written: dict) -> None:
    doc = json.loads(written["geojson"].read_text())
    assert doc["type"] == "FeatureCollection"
    nuclei, inst_map = typed_case["nuclei"], typed_case["inst_map"]
    areas = np.bincount(inst_map.ravel())
    assert len(doc["features"]) == len(nuclei)
    uuids = set()
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        uuids.add(feature["id"])
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
        poly = shape(feature["geometry"])
        assert poly.is_valid and poly.exterior.is_ccw and poly.area > 0
        props = feature["properties"]
        assert props["objectType"] == "detection"
        m = props["measurements"]
        rec = nuclei[m["Nucleus ID"]]
        name, colour = typed_case["type_info"][rec["type"]]
        assert props["classification"] == {"name": name, "color": list(colour)}
        assert m["Type probability"] == pytest.approx(rec["type_prob"])
        assert m["Area (px^2)"] == areas[m["Nucleus ID"]]
        assert 0 <= m["Eccentricity"] < 1 and 0 < m["Solidity"] <= 1
        assert m[f"Probability {name}"] == pytest.approx(rec["type_probs"][rec["type"]])
        # the polygon (through the pixel centres, or along the pixel edges where the contour
        # had to be repaired) lies inside the nucleus' bbox
        (rmin, cmin), (rmax, cmax) = rec["bbox"]
        x0, y0, x1, y1 = poly.bounds
        assert cmin - 1 <= x0 and x1 <= cmax and rmin - 1 <= y0 and y1 <= rmax
    assert len(uuids) == len(nuclei)


def test_csv_rows_match_records_and_measurements(typed_case: dict, written: dict) -> None:
    rows = _csv_rows(written["csv"])
    nuclei, inst_map = typed_case["nuclei"], typed_case["inst_map"]
    shapes = nucleus_measurements(inst_map, nuclei)
    assert [int(r["id"]) for r in rows] == list(nuclei)
    for row in rows:
        rec = nuclei[int(row["id"])]
        assert int(row["type"]) == rec["type"]
        assert row["type_name"] == typed_case["type_info"][rec["type"]][0]
        assert float(row["type_prob"]) == rec["type_prob"]
        assert [float(row["centroid_x"]), float(row["centroid_y"])] == rec["centroid"]
        assert float(row["area"]) == (inst_map == int(row["id"])).sum()
        assert float(row["perimeter"]) == shapes[int(row["id"])]["perimeter"]
        bbox = [[int(row["bbox_rmin"]), int(row["bbox_cmin"])]]
        bbox.append([int(row["bbox_rmax"]), int(row["bbox_cmax"])])
        assert bbox == rec["bbox"]
        assert float(row["prob_epithelial"]) == pytest.approx(rec["type_probs"][3])


def test_overlay_draws_contours_in_type_colours(typed_case: dict, written: dict) -> None:
    overlay = cv2.imread(str(written["overlay"]))
    image = typed_case["image"]
    assert overlay.shape == image.shape
    overlay = cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB)
    nuclei = typed_case["nuclei"]
    for rec in nuclei.values():
        colour = typed_case["type_info"][rec["type"]][1]
        x, y = (round(v) for v in rec["centroid"])
        if y > 100:  # below the legend: the centroid dot is there in its class colour
            assert tuple(overlay[y, x]) == colour
    for t, (_, colour) in typed_case["type_info"].items():
        if t == 0:
            continue  # black: also the legend's text
        points = [p for r in nuclei.values() if r["type"] == t for p in r["contour"]]
        points = [(x, y) for x, y in points if x > 130 or y > 90]  # not under the legend
        if points:
            # neighbours share boundary pixels and the legend covers the top left corner:
            # most contour points have the class colour within one pixel
            near = [
                np.all(overlay[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] == colour, -1).any()
                for x, y in points
            ]
            assert np.mean(near) > 0.8, t
        else:  # a class with no nucleus is neither drawn nor in the legend
            assert np.all(overlay == colour, axis=-1).sum() < 5, t


def test_overlay_has_a_legend_and_rejects_bad_images(typed_case: dict, written, tmp_path) -> None:
    overlay = cv2.cvtColor(cv2.imread(str(written["overlay"])), cv2.COLOR_BGR2RGB)
    image = typed_case["image"]
    assert not np.all(image == 0, axis=-1).any()
    # what a reader sees: dark text on the legend's light box in the top-left corner, one line of
    # it per class (not how the text's edges are anti-aliased: OpenCV 5 smooths them, 4 did not)
    dark = overlay.max(axis=-1) < 100
    box = overlay[:90, :130].min(axis=-1) >= 160  # the legend's whitened background
    assert box.mean() > 0.5
    text = dark[:90, :130]
    assert text.sum() > 50
    rows = np.flatnonzero(text.any(axis=1))
    lines = 1 + int((np.diff(rows) > 1).sum())  # bands of rows with text, one per class
    assert lines == len(typed_case["type_info"]) - 1  # class 0, background, has no line
    # nothing else is drawn dark: outside the corner a dark pixel was dark in the image already
    assert not (dark & (image.max(axis=-1) >= 100))[90:].any()
    assert not (dark & (image.max(axis=-1) >= 100))[:, 130:].any()
    with pytest.raises(HoverNetError, match="RGB"):
        write_overlay(tmp_path / "x.png", typed_case["image"][..., 0], {}, None)
    assert not (tmp_path / "x.png").exists()


def test_all_formats_agree_on_ids_and_counts(typed_case: dict, written: dict) -> None:
    ids_json = [int(k) for k in json.loads(written["json"].read_text())["nuc"]]
    ids_mat = scipy.io.loadmat(written["mat"])["inst_uid"].ravel().tolist()
    features = json.loads(written["geojson"].read_text())["features"]
    ids_geo = [f["properties"]["measurements"]["Nucleus ID"] for f in features]
    ids_csv = [int(r["id"]) for r in _csv_rows(written["csv"])]
    ids_map = np.unique(typed_case["inst_map"])[1:].tolist()
    assert ids_json == ids_mat == ids_geo == ids_csv == ids_map


def test_untyped_outputs(tmp_path) -> None:
    pred_map = np.load(REFERENCE / "postproc_untyped_0.npz")["pred_map"]
    inst_map, nuclei = postprocess(pred_map)
    write_mat(tmp_path / "a.mat", inst_map, nuclei)
    write_csv(tmp_path / "a.csv", nuclei, None, nucleus_measurements(inst_map, nuclei))
    write_geojson(tmp_path / "a.geojson", nuclei, None)
    write_json(tmp_path / "a.json", nuclei)
    mat = scipy.io.loadmat(tmp_path / "a.mat")
    assert "inst_type" not in mat and "raw_map" not in mat
    assert mat["inst_centroid"].shape == (len(nuclei), 2)
    rows = _csv_rows(tmp_path / "a.csv")
    assert len(rows) == len(nuclei)
    assert {(r["type"], r["type_name"], r["type_prob"]) for r in rows} == {
        ("", UNTYPED_CLASS[0], "")
    }
    features = json.loads((tmp_path / "a.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} == {UNTYPED_CLASS[0]}
    assert "Type probability" not in features[0]["properties"]["measurements"]
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["mag"] is None and doc["nuc"]["1"]["type"] is None


def test_geojson_outlines_follow_pixel_edges_even_for_degenerate_shapes(tmp_path) -> None:
    inst = np.zeros((40, 40), np.int32)
    inst[2:8, 2:8] = 1  # two squares touching at one corner: a self-touching contour
    inst[8:14, 8:14] = 1
    inst[20, 5:30] = 2  # an L-shaped 1-px line: contour with points but no area
    inst[20:35, 5] = 2
    _, nuclei = instance_records(inst)
    assert len(nuclei) == 2
    write_geojson(tmp_path / "d.geojson", nuclei, None, nucleus_measurements(inst, nuclei))
    features = json.loads((tmp_path / "d.geojson").read_text())["features"]
    for feature in features:
        geom = shape(feature["geometry"])
        assert geom.is_valid and geom.area > 0
        for poly in getattr(geom, "geoms", [geom]):
            assert poly.exterior.is_ccw
    # pixel-corner outlines: the area is exactly the pixel count; the two squares that only
    # touch at a corner are two polygons meeting at (8, 8)
    squares, line = (shape(f["geometry"]) for f in features)
    assert squares.geom_type == "MultiPolygon" and squares.area == 72
    assert sorted(p.bounds for p in squares.geoms) == [(2, 2, 8, 8), (8, 8, 14, 14)]
    assert line.geom_type == "Polygon" and line.area == 39
    assert line.bounds == (5, 20, 30, 35)


def test_empty_results_write_empty_files(tmp_path) -> None:
    inst = np.zeros((16, 16), np.int32)
    write_mat(tmp_path / "e.mat", inst, {})
    write_csv(tmp_path / "e.csv", {}, None, {})
    write_geojson(tmp_path / "e.geojson", {}, None)
    write_overlay(tmp_path / "e.png", np.zeros((16, 16, 3), np.uint8), {}, None)
    assert scipy.io.loadmat(tmp_path / "e.mat")["inst_uid"].size == 0
    assert _csv_rows(tmp_path / "e.csv") == []
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []
    overlay = cv2.imread(str(tmp_path / "e.png"))
    assert overlay.any()  # the legend says "Nucleus: 0"


def test_typed_outputs_have_the_same_structure_with_no_nuclei(typed_case, written, tmp_path):
    """0 nuclei or many: same .mat keys, same CSV columns (prob_* from the type info), and a
    legend listing every class."""
    info = typed_case["type_info"]
    image = typed_case["image"]
    empty = np.zeros(image.shape[:2], np.int32)
    write_mat(tmp_path / "e.mat", empty, {}, typed=True)
    write_csv(tmp_path / "e.csv", {}, info, {})
    write_overlay(tmp_path / "e.png", image, {}, info)
    full = scipy.io.loadmat(written["mat"])
    mat = scipy.io.loadmat(tmp_path / "e.mat")
    assert sorted(k for k in mat if not k.startswith("__")) == sorted(
        k for k in full if not k.startswith("__") and k != "raw_map"
    )
    assert mat["inst_type"].size == 0
    with open(written["csv"], newline="") as f:
        header_full = next(csv.reader(f))
    with open(tmp_path / "e.csv", newline="") as f:
        header_empty = next(csv.reader(f))
    assert header_empty == header_full
    # class 0 is the type branch's "no type": named unclassified whatever the type info says
    assert [c for c in header_empty if c.startswith("prob_")] == [
        "prob_unclassified",
        *(f"prob_{name}" for t, (name, _) in sorted(info.items()) if t > 0),
    ]
    # the legend of the empty image has a swatch in every class colour
    overlay = cv2.cvtColor(cv2.imread(str(tmp_path / "e.png")), cv2.COLOR_BGR2RGB)
    corner = overlay[:120, :200]
    for t, (_, colour) in info.items():
        if t:
            assert np.all(corner == colour, axis=-1).sum() >= 20, t


def test_failed_write_leaves_nothing(tmp_path) -> None:
    bad = {1: {"bbox": [[0, 0], [1, 1]], "centroid": [0.5, 0.5], "contour": object()}}
    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", bad)
    assert list(tmp_path.iterdir()) == []
