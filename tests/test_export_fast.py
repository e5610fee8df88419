"""The GeoJSON geometry written without shapely, and the one-pass slide export, against the
shapely path and the file-by-file export they replace: equal dicts, equal text, equal bytes.

The outlines come from `nucleus_measurements` on label maps made here: ordinary blobs, a ring
touching itself at a corner (pixels meeting diagonally), nuclei in several pieces, 1-pixel
nuclei and lines, holes, and a map of random pixels where all of these are common.
"""

from __future__ import annotations

import gzip
import io
import json
import os

import numpy as np
import pytest
from shapely import affinity
from shapely.geometry import mapping
from support import single_exports

from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.postprocess import instance_records
from hovernet.io import slide_exports
from hovernet.io.slide_exports import ExportSpec, export_slide, output_paths
from hovernet.io.store import NucleusStore
from hovernet.io.writers import (
    CoordinateText,
    FeatureClasses,
    _outline_geometry,
    _polygon,
    feature_geometry,
    nucleus_feature,
    nucleus_feature_json,
    simple_ring,
)

# 1.002...: the demo slide (0.499 um/px) processed at 0.5 um/px; 2.0: sub-pixel phases
SCALES = (1.0, 1.002031144211239, 2.0, 1 / 3, 0.998)
TYPE_INFO = {0: ("background", (0, 0, 0)), 1: ("tumour", (255, 0, 0)), 2: ("other", (0, 0, 255))}


def shapely_geometry(outline, contour, scale: float) -> dict:
    """The geometry as nucleus_feature made it with shapely for every nucleus."""
    geom = _outline_geometry(outline) if outline else _polygon(contour)
    if scale != 1.0:
        geom = affinity.scale(geom, scale, scale, origin=(0, 0))
    return mapping(geom)


def awkward_map() -> np.ndarray:
    inst = np.zeros((48, 72), np.int32)
    inst[2:8, 2:8] = 1  # two squares meeting at a corner: one ring touching itself there
    inst[8:14, 8:14] = 1
    inst[3, 20] = 2  # one pixel
    inst[2:6, 30:34] = 3  # two pieces: two rings
    inst[10:13, 30:33] = 3
    inst[20, 5:30] = 4  # an L-shaped 1-px line
    inst[20:35, 5] = 4
    inst[20:30, 40:50] = 5  # a hole (outer boundary only)
    inst[23:27, 43:47] = 0
    for k in range(6):  # a diagonal staircase: a corner touch at every step
        inst[36 + k, 40 + k] = 6
    inst[44, 2] = 7  # two pixels meeting diagonally
    inst[45, 3] = 7
    inst[40, 60] = 8  # two single pixels apart
    inst[44, 66] = 8
    inst[5:12, 55:68] = 9  # an ordinary blob
    return inst


def random_map(seed: int = 0) -> np.ndarray:
    """Random pixels labelled by 6 x 6 cell: pieces, corner touches, holes and single pixels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((66, 66))
    cells = (rows // 6) * 11 + cols // 6 + 1
    return np.where(rng.random((66, 66)) < 0.55, cells, 0).astype(np.int32)


def outlines_of(inst: np.ndarray) -> dict[int, list]:
    ids = np.unique(inst)[1:].tolist()
    return {i: m["outline"] for i, m in nucleus_measurements(inst, ids).items()}


@pytest.fixture(scope="module")
def outlines() -> list:
    found = list(outlines_of(awkward_map()).values())
    for seed in range(3):
        found += outlines_of(random_map(seed)).values()
    return found


def test_awkward_outlines_take_the_path_they_should() -> None:
    out = outlines_of(awkward_map())
    for nid in (1, 3, 6, 7, 8):  # corner touches, several pieces
        assert simple_ring(out[nid]) is None, nid
    for nid in (2, 4, 5, 9):  # one pixel, a 1-px line, a hole, a blob: simple rings
        assert simple_ring(out[nid]) is not None, nid
    assert len(out[3]) == 2 and len(out[8]) == 2
    # what shapely makes of the corner touches: polygons meeting at the corner
    assert shapely_geometry(out[1], None, 1.0)["type"] == "MultiPolygon"


@pytest.mark.parametrize("scale", SCALES)
def test_geometry_equals_shapely(outlines: list, scale: float) -> None:
    n_simple = sum(simple_ring(o) is not None for o in outlines)
    assert 0 < n_simple < len(outlines)  # both paths are exercised
    for outline in outlines:
        fast, ref = feature_geometry(outline, None, scale), shapely_geometry(outline, None, scale)
        assert fast == ref
        assert json.dumps(fast) == json.dumps(ref)  # floats, not ints: "12.0"


def test_orientation_start_and_closing_of_other_rings() -> None:
    """Rings mask_outline does not make: clockwise, started elsewhere, closed, collinear."""
    blob = outlines_of(awkward_map())[9][0]
    variants = [
        [blob[::-1]],  # clockwise: reversed as shapely's orient does, first point kept
        [blob[3:] + blob[:3]],
        [[*blob, blob[0]]],  # closed: a repeated point, left to shapely
        [[(0, 0), (1, 0), (2, 0)]],  # no area
        [[[4, 4], [6, 4], [6, 5], [4, 5]]],  # lists, as the store gives them
    ]
    for outline in variants:
        for scale in SCALES:
            fast, ref = (
                feature_geometry(outline, None, scale),
                shapely_geometry(outline, None, scale),
            )
            assert json.dumps(fast) == json.dumps(ref)
            assert fast == ref


def records(inst: np.ndarray, scale: float) -> list[dict]:
    """Slide-store records of a label map: typed, measured, level-0 centroid."""
    types = (inst % 3).astype(np.int32)
    softmax = np.random.default_rng(1).dirichlet(np.ones(3), size=inst.shape)
    inst, nuclei = instance_records(inst, types, softmax)  # renumbered 1..N
    shapes = nucleus_measurements(inst, nuclei)
    out = []
    for nid, rec in nuclei.items():
        rec = dict(rec, measurements=shapes[nid])
        rec["xy"] = [v * scale for v in rec["centroid"]]
        out.append(rec)
    return out


@pytest.mark.parametrize("scale", SCALES)
def test_feature_text_equals_json_dumps(scale: float) -> None:
    recs = records(random_map(5), scale) + records(awkward_map(), scale)
    names = ["unclassified", "tumour", "other"]
    coords = CoordinateText(scale)
    for nid, rec in enumerate(recs, start=1):
        shapes = {nid: rec["measurements"]}
        for info, shp in ((TYPE_INFO, shapes), (None, shapes), (TYPE_INFO, None)):
            # shapes None: no outline, the contour (pixel centres) through shapely
            classes = FeatureClasses(info, names)
            feature = nucleus_feature(f"s/{nid}", nid, rec, classes, shp, scale)
            geometry = shapely_geometry(shp[nid]["outline"] if shp else None, rec["contour"], scale)
            assert feature["geometry"] == geometry
            text = nucleus_feature_json(f"s/{nid}", nid, rec, classes, shp, coords)
            assert text == json.dumps(feature) == json.dumps({**feature, "geometry": geometry})


@pytest.fixture()
def store(tmp_path):
    scale = 1.002031144211239
    meta = {"scale": scale, "nr_types": 3, "proc_mpp": 0.5}
    with NucleusStore(tmp_path / "s.db", meta) as st:
        st.add_region(0, (0, 0, 66, 66), records(random_map(7), scale))
        st.add_region(1, (66, 0, 138, 48), records(awkward_map(), scale))
        yield st


def old_geojson_bytes(store: NucleusStore, stem: str) -> bytes:
    """The .geojson.gz as written before: shapely geometry, json.dumps, TextIOWrapper."""
    scale = float(store.meta["scale"])
    names = slide_exports._class_names(store, TYPE_INFO)
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8") as fh,
    ):
        fh.write('{"type": "FeatureCollection", "features": [')
        for nid, rec in enumerate(store.nuclei(), start=1):
            shapes = {nid: slide_exports.level0_shapes(rec, scale)}
            classes = FeatureClasses(TYPE_INFO, names)
            feature = nucleus_feature(f"{stem}/{nid}", nid, rec, classes, shapes, scale)
            outline = shapes[nid]["outline"]
            feature["geometry"] = shapely_geometry(outline, rec["contour"], scale)
            fh.write(("\n" if nid == 1 else ",\n") + json.dumps(feature))
        fh.write("\n]}\n")
    return raw.getvalue()


def test_geojson_file_is_byte_identical(store, tmp_path) -> None:
    path = tmp_path / "s.geojson.gz"
    single_exports.export_geojson(path, store, TYPE_INFO, "s")
    assert path.read_bytes() == old_geojson_bytes(store, "s")


THUMB = np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8)
# thumbnail at 2 um/px, store at 0.5 um/px: 4 store pixels per thumbnail pixel
SPEC = ExportSpec("s.svs", (138, 66), 0.25, 0.5, (138, 66), 20.0, THUMB, 2.0, None, TYPE_INFO)


def test_one_pass_writes_what_each_exporter_writes(store, tmp_path) -> None:
    paths = output_paths(tmp_path / "all", "s")
    export_slide(store, paths, SPEC, log=lambda _: None)
    one = output_paths(tmp_path / "one", "s")
    single_exports.export_geojson(one["geojson"], store, TYPE_INFO, "s")
    single_exports.export_csv(one["csv"], store, TYPE_INFO, SPEC.frame_mpp)
    single_exports.export_json(one["json"], store, 20.0)
    single_exports.export_overlay(one["overlay"], THUMB, 4.0, store, TYPE_INFO)
    for key in ("geojson", "csv", "json", "overlay"):
        assert paths[key].read_bytes() == one[key].read_bytes(), key


def test_a_failed_export_leaves_no_file(store, tmp_path, monkeypatch) -> None:
    def fail(key, nid, *args):
        if nid == 5:
            raise RuntimeError("disk gone")
        return nucleus_feature_json(key, nid, *args)

    monkeypatch.setattr(slide_exports, "nucleus_feature_json", fail)
    with pytest.raises(RuntimeError, match="disk gone"):
        export_slide(store, output_paths(tmp_path / "x", "s"), SPEC, log=lambda _: None)
    assert os.listdir(tmp_path / "x") == []  # none of the four files, no temporary left
