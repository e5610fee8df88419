"""`hovernet view`: the R*Tree in the store, read-only box queries, the sidecar index, the tile
pyramid, the Flask app's routes and their parameter checks, traversal, and the command line.

Most tests run on a real slide-mode output (the bundled model on a 1024 px crop of the bundled
slide, made once per session) or on synthetic stores (`view_helpers.synthetic_store`)."""

from __future__ import annotations

import base64
import contextlib
import csv
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.view_helpers import serving, slide_output, synthetic_store

from hovernet.demo import SAMPLE, SAMPLE_SLIDE
from hovernet.errors import HoverNetError
from hovernet.io.store import NucleusStore
from hovernet.io.wsi import open_slide
from hovernet.view.catalog import load_slides
from hovernet.view.index import StoreIndex, pack_nuclei, sidecar_path, unpack_nuclei
from hovernet.view.server import create_app
from hovernet.view.tiles import Pyramid, TileCache, read_tile


@pytest.fixture(scope="module")
def real_out(tmp_path_factory) -> Path:
    return slide_output(tmp_path_factory.getbasetemp() / "view_real")


@pytest.fixture(scope="module")
def client(real_out):
    slides = load_slides(real_out)
    yield create_app(slides).test_client()
    for s in slides:
        s.close()


@pytest.fixture(scope="module")
def csv_rows(real_out) -> list[dict]:
    with open(real_out / "cmu_crop.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _sql(path: Path):
    """A read-write connection closed at the end of the with block (sqlite3's own context
    manager only commits), so that no -wal file is left open."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def _store_boxes(path: Path) -> dict[int, tuple]:
    with _sql(path) as db:
        rows = db.execute("SELECT id, cmin, rmin, cmax, rmax, type FROM nuclei").fetchall()
    return {r[0]: r[1:] for r in rows}


def _tree(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# -- the store's R*Tree ----------------------------------------------------------------------
def test_store_fills_the_rtree_per_region_and_replaces_a_redone_region(tmp_path):
    path = tmp_path / "s.db"
    synthetic_store(path, 900, spacing=20, region=300)
    with _sql(path) as db:
        tree = {r[0]: r[1:] for r in db.execute("SELECT * FROM nuclei_rtree")}
        boxes = {r[0]: r[1:] for r in db.execute("SELECT id, cmin, cmax, rmin, rmax FROM nuclei")}
    assert len(boxes) == 900 and tree == {k: tuple(map(float, v)) for k, v in boxes.items()}
    with NucleusStore(path, {}) as store:  # a resumed run redoes region 0 with one nucleus
        rec = {
            "bbox": [[1, 2], [5, 9]],
            "centroid": [5.0, 3.0],
            "contour": np.array([[2, 1], [8, 1], [8, 4], [2, 4]]),
            "type": 1,
            "type_prob": 0.9,
            "xy": [5.0, 3.0],
            "measurements": {"area": 9, "perimeter": 9, "eccentricity": 0.5, "solidity": 1},
        }
        store.add_region(0, (0, 0, 300, 300), [rec])
    with _sql(path) as db:
        ids = {r[0] for r in db.execute("SELECT id FROM nuclei")}
        tree_ids = {r[0] for r in db.execute("SELECT id FROM nuclei_rtree")}
        (new,) = db.execute("SELECT id FROM nuclei WHERE region = 0").fetchall()
        row = db.execute("SELECT * FROM nuclei_rtree WHERE id = ?", new).fetchone()
    assert ids == tree_ids and row[1:] == (2.0, 9.0, 1.0, 5.0)


def test_a_store_made_before_the_rtree_gets_it_when_reopened_for_writing(tmp_path):
    path = tmp_path / "old.db"
    synthetic_store(path, 400, spacing=20, region=200, rtree=False)
    with _sql(path) as db:
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name='nuclei_rtree'").fetchone()
    NucleusStore(path, {}).close()
    with _sql(path) as db:
        assert db.execute("SELECT COUNT(*) FROM nuclei_rtree").fetchone()[0] == 400


# -- box queries -----------------------------------------------------------------------------
@pytest.mark.parametrize("rtree", [True, False])
def test_box_queries_match_a_full_scan_and_leave_the_store_untouched(tmp_path, rtree):
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "s.db"
    synthetic_store(path, 5000, spacing=14, region=400, rtree=rtree)
    before = _tree(folder)
    boxes = _store_boxes(path)
    index = StoreIndex(path)
    rng = np.random.default_rng(1)
    for _ in range(25):
        x0, y0 = rng.uniform(-50, 1000, 2)
        x1, y1 = x0 + rng.uniform(1, 400), y0 + rng.uniform(1, 400)
        types = None if rng.random() < 0.5 else [1, 3]
        doc = unpack_nuclei(index.query((x0, y0, x1, y1), types, limit=100000))
        want = {
            i
            for i, (c0, r0, c1, r1, t) in boxes.items()
            if c1 > x0 and c0 < x1 and r1 > y0 and r0 < y1 and (types is None or t in types)
        }
        assert set(doc["ids"].astype(int).tolist()) == want and not doc["truncated"]
    # contours come back as the store holds them, and the limit is reported
    doc = unpack_nuclei(index.query((0, 0, 300, 300), None, limit=10))
    assert len(doc["ids"]) == 10 and doc["truncated"]
    coords = doc["coords"].reshape(-1, 2)
    ids = doc["ids"].astype(int).tolist()
    recs = {r["store_id"]: r for r in index.records(ids)}
    for k, nid in enumerate(ids):
        rec = recs[nid]
        part = coords[doc["offsets"][k] : doc["offsets"][k + 1]]
        np.testing.assert_array_equal(part, rec["contour"])
        assert doc["types"][k] == rec["type"]
        assert doc["area"][k] == pytest.approx(rec["measurements"]["area"] * 0.25**2, rel=1e-6)
        assert doc["solidity"][k] == pytest.approx(rec["measurements"]["solidity"], rel=1e-6)
        assert doc["type_prob"][k] == pytest.approx(rec["type_prob"], rel=1e-6)
    with index._use() as reader, pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._db.execute("CREATE TABLE nope (a)")
    index.close()
    after = _tree(folder)
    sidecar = path.name + ".view-index.db"
    assert (sidecar in after) is (not rtree)  # the only new file: the sidecar of an old store
    after.pop(sidecar, None)
    assert after == before


def test_packed_answers_round_trip_empty_untyped_and_missing_values():
    empty = unpack_nuclei(pack_nuclei([], False, 0.5))
    assert empty["n"] == 0 and empty["offsets"].tolist() == [0] and empty["coords"].size == 0
    contour = np.array([[3, 4], [5, 4], [5, 6]], np.int32)
    rows = [(7, None, None, 8.0, 0.5, 0.9, contour.tobytes()), (2**40, 2, 0.75, 4.0, 0.1, 1.0, b"")]
    doc = unpack_nuclei(pack_nuclei(rows, True, 0.5, {"view": {"count": 3, "more": False}}))
    assert (
        doc["truncated"] and doc["ids"].tolist() == [7, 2**40] and doc["types"].tolist() == [-1, 2]
    )
    assert doc["view"] == {"count": 3, "more": False}
    assert np.isnan(doc["type_prob"][0]) and doc["type_prob"][1] == 0.75
    assert doc["area"].tolist() == [2.0, 1.0]  # um^2 at 0.5 um/px
    assert doc["offsets"].tolist() == [0, 3, 3]
    np.testing.assert_array_equal(doc["coords"].reshape(-1, 2), contour)


def test_the_sidecar_is_rebuilt_when_the_store_changes_and_can_live_in_a_cache(tmp_path):
    path = tmp_path / "s.db"
    synthetic_store(path, 600, spacing=20, region=250, rtree=False)
    side = sidecar_path(path)
    StoreIndex(path).close()
    with _sql(side) as db:
        db.execute("UPDATE meta SET value = 'stale' WHERE key = 'signature'")
    index = StoreIndex(path)
    assert unpack_nuclei(index.query((0, 0, 1e6, 1e6)))["n"] == 600
    index.close()
    with _sql(side) as db:
        assert db.execute("SELECT value FROM meta").fetchone()[0].startswith("600:")
    cached = sidecar_path(path, tmp_path / "cache")
    assert cached.parent == tmp_path / "cache" and cached.name.endswith(".view-index.db")
    index = StoreIndex(path, cache_dir=tmp_path / "cache")  # built there when asked for
    assert index._sidecar == cached and cached.is_file()
    assert unpack_nuclei(index.query((0, 0, 1e6, 1e6)))["n"] == 600
    index.close()


def test_density_counts_every_nucleus_in_its_cell_and_ranges_are_percentiles(tmp_path):
    path = tmp_path / "s.db"
    synthetic_store(path, 3000, spacing=16, region=300)
    index = StoreIndex(path)
    grid = index.density(bins=32)
    counts = index.counts_by_type()
    assert grid["counts"].sum() == 3000
    for k, t in enumerate(grid["types"]):
        assert grid["counts"][k].sum() == counts[t]
    with _sql(path) as db:
        cx, cy, t = db.execute("SELECT cx, cy, type FROM nuclei WHERE id = 77").fetchone()
    cell = grid["cell"]
    assert grid["counts"][grid["types"].index(t), int(cy // cell), int(cx // cell)] >= 1
    ranges = index.value_ranges()
    area = np.pi * np.array([3.0, 6.0]) ** 2 * 0.25**2  # radius 3-6 px at 0.25 um/px, in um^2
    assert area[0] <= ranges["area"][0] < ranges["area"][1] <= area[1]
    assert 0 <= ranges["eccentricity"][0] < ranges["eccentricity"][1] <= 0.9
    index.close()


def test_export_numbers_and_records_match_the_csv_of_a_real_run(real_out, csv_rows):
    index = StoreIndex(real_out / "cmu_crop.db")
    ids, cut = index.ids_in_box((0, 0, 1e6, 1e6), limit=10**6)
    assert not cut
    numbers = index.export_numbers(ids)
    assert sorted(numbers.values()) == list(range(1, len(csv_rows) + 1))
    for rec in index.records(ids[:: max(1, len(ids) // 40)]):
        row = csv_rows[numbers[rec["store_id"]] - 1]
        assert int(row["id"]) == numbers[rec["store_id"]]
        assert float(row["centroid_x"]) == pytest.approx(rec["xy"][0], abs=0.01)
        assert float(row["centroid_y"]) == pytest.approx(rec["xy"][1], abs=0.01)
    index.close()


def test_closing_an_index_interrupts_a_query_running_in_another_thread(real_out):
    """Ctrl-C while the viewer counts the nuclei: `close` must not close a connection under a
    running query (that crashed or hung the viewer). The endless query stands for a long count."""
    index = StoreIndex(real_out / "cmu_crop.db")
    running, outcome = threading.Event(), []
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT MAX(x) FROM c"

    def count_forever(reader):
        running.set()
        return reader._db.execute(endless).fetchone()

    def query() -> None:
        try:
            index._cached("forever", count_forever)
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    assert running.wait(30)
    time.sleep(0.05)  # inside SQLite now
    index.close()
    thread.join(30)
    assert not thread.is_alive() and outcome == ["interrupted"]
    assert index._readers == []  # the querying thread closed its own connection
    with pytest.raises(HoverNetError, match="closed"):
        index.records([1])


def test_closing_a_slide_while_a_tile_is_read_leaves_the_image_to_that_read(real_out):
    (s,) = load_slides(real_out)
    pyramid = s.pyramid
    with s.reading() as image:
        s.close()  # as the viewer does on Ctrl-C while a server thread reads a tile
        tile = read_tile(image, pyramid, pyramid.max_level, 0, 0)
        assert s._slide is image  # still open for this read
    assert tile.shape[2] == 3 and s._slide is None  # the read that ended closed it
    with pytest.raises(HoverNetError, match="closed"):
        with s.reading():
            pass


# -- tiles -----------------------------------------------------------------------------------
def test_pyramid_levels_halve_down_to_one_pixel_with_short_edge_tiles():
    p = Pyramid(1000, 600, tile=256)
    assert p.max_level == 10 and p.downsample(10) == 1 and p.downsample(0) == 1024
    assert p.level_size(10) == (1000, 600) and p.level_size(9) == (500, 300)
    assert p.level_size(0) == (1, 1) and p.tile_counts(10) == (4, 3)
    assert p.tile_box(10, 3, 2) == (768, 512, 232, 88)
    assert p.tile_box(9, 1, 1) == (256, 256, 244, 44)
    for bad in [(11, 0, 0), (-1, 0, 0), (10, 4, 0), (10, 0, 3), (0, 1, 0)]:
        with pytest.raises(ValueError):
            p.tile_box(*bad)
    assert Pyramid(1, 1).max_level == 0


def test_tiles_of_the_svs_are_its_pixels_and_their_block_means():
    import openslide

    with open_slide(SAMPLE_SLIDE) as slide, openslide.OpenSlide(str(SAMPLE_SLIDE)) as ref:
        p = Pyramid(*slide.dimensions)
        full = np.asarray(ref.read_region((512, 256), 0, (256, 256)).convert("RGB"))
        np.testing.assert_array_equal(read_tile(slide, p, p.max_level, 2, 1), full)
        block = np.asarray(ref.read_region((512, 512), 0, (512, 512)).convert("RGB"))
        half = cv2.resize(block, (256, 256), interpolation=cv2.INTER_AREA)
        got = read_tile(slide, p, p.max_level - 1, 1, 1)
        assert np.abs(got.astype(int) - half).max() <= 1
        w, h = slide.dimensions  # the last tile of a level is cut to the level's edge
        nx, ny = p.tile_counts(p.max_level)
        assert read_tile(slide, p, p.max_level, nx - 1, ny - 1).shape == (
            h - (ny - 1) * 256,
            w - (nx - 1) * 256,
            3,
        )


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_tiles_of_a_pyramid_tiff_through_both_tiff_readers(backend, data_dir):
    with open_slide(data_dir / "seed_format" / "slide_a.tif", backend=backend) as slide:
        p = Pyramid(*slide.dimensions)
        level = p.max_level - 2  # a pyramid level of its own (downsample 4)
        tile = read_tile(slide, p, level, 1, 2)
        want = slide.read(256, 512, 256, 256, slide.mpp * 4)
        np.testing.assert_array_equal(tile, want)
        assert 40 < tile.mean() < 250  # real tissue, not the white outside


def test_tiles_of_a_plain_image():
    with open_slide(SAMPLE, mpp=0.5) as slide:
        p = Pyramid(*slide.dimensions)
        rgb = cv2.cvtColor(cv2.imread(str(SAMPLE)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(read_tile(slide, p, p.max_level, 0, 0), rgb[:256, :256])
        assert read_tile(slide, p, 0, 0, 0).shape == (1, 1, 3)


def test_tile_cache_keeps_the_recent_tiles_within_its_bytes():
    cache = TileCache(max_bytes=100)
    for k in range(5):
        cache.put(k, bytes(30))
    assert cache.bytes <= 100 and len(cache) == 3 and cache.get(0) is None
    assert cache.get(4) == bytes(30)
    cache.put(5, bytes(30))  # 2 is now the oldest
    assert cache.get(2) is None and cache.get(3) is not None and cache.get(4) is not None
    cache.put(6, bytes(500))  # larger than the cache: not kept
    assert cache.get(6) is None and cache.bytes <= 100


# -- routes ----------------------------------------------------------------------------------
def test_slides_and_info_name_the_classes_in_the_summary_colours(client, real_out):
    summary = json.loads((real_out / "cmu_crop.summary.json").read_text())
    (entry,) = client.get("/api/slides").json
    assert entry == {
        "name": "cmu_crop",
        "dimensions": summary["dimensions"],
        "mpp": summary["slide_mpp"],
        "nuclei": summary["nuclei"],
    }
    info = client.get("/api/slides/cmu_crop").json
    assert {c["name"]: c["count"] for c in info["classes"] if c["count"]} == {
        k: v for k, v in summary["nuclei_per_class"].items() if v
    }
    # the names and colours of the exports (type 0 is "unclassified", grey, as they draw it)
    exported = json.loads(gzip.decompress((real_out / "cmu_crop.geojson.gz").read_bytes()))
    colours = {
        f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"]
        for f in exported["features"]
    }
    assert {c["name"]: c["colour"] for c in info["classes"] if c["count"]} == colours
    assert [c["key"] for c in info["classes"]] == sorted(summary["type_info"])
    assert info["max_level"] == 10 and info["tile_size"] == 256
    assert info["scale"] == 1024 / round(1024 * 0.499 / 0.5)  # level-0 px per store px


def test_a_tile_is_a_jpeg_of_the_slide(client, real_out):
    r = client.get("/api/slides/cmu_crop/tiles/10/1_2.jpg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    tile = cv2.cvtColor(cv2.imdecode(np.frombuffer(r.data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    import tifffile

    crop = tifffile.imread(real_out.parent / "cmu_crop.tif")[512:768, 256:512]
    assert tile.shape == crop.shape and np.abs(tile.astype(int) - crop).mean() < 8


def test_nuclei_of_a_box_hold_the_csv_nucleus_outline(client, csv_rows):
    row = max(csv_rows, key=lambda r: float(r["area"]))
    x, y = float(row["centroid_x"]), float(row["centroid_y"])
    r = client.get(f"/api/slides/cmu_crop/nuclei?bbox={x - 5},{y - 5},{x + 5},{y + 5}")
    assert r.mimetype == "application/octet-stream"
    doc = unpack_nuclei(r.data)
    scale = client.get("/api/slides/cmu_crop").json["scale"]
    coords = doc["coords"].reshape(-1, 2)
    found = []
    for k in range(len(doc["ids"])):
        pts = (coords[doc["offsets"][k] : doc["offsets"][k + 1]] + 0.5) * scale
        if np.hypot(*(pts.mean(axis=0) - (x, y))) < 3:
            found.append(k)
    (k,) = found
    assert doc["types"][k] == int(row["type"])
    assert doc["area"][k] == pytest.approx(float(row["area"]) * 0.499**2, rel=0.01)


def test_the_count_in_view_is_what_the_download_of_the_view_holds(client, real_out):
    # the page fetches the view plus a margin, with view= the view itself: the count it shows
    # must be the number of nuclei the GeoJSON download of that view holds
    index = load_slides(real_out)[0].index
    for view, types in [("200.4,300,600.2,700.7", ""), ("300,-20,700,120.5", "&types=0,1,2,3")]:
        outer = unpack_nuclei(
            client.get(f"/api/slides/cmu_crop/nuclei?bbox=-50,0,700,900&view={view}{types}").data
        )
        download = client.get(f"/api/slides/cmu_crop/nuclei.geojson?bbox={view}{types}").json
        assert outer["view"] == {"count": len(download["features"]), "more": False}
        assert outer["n"] > outer["view"]["count"] > 5
    # counted up to the download's limit, then "more"
    assert index.count_in_box((0, 0, 1024, 1024), None, 10) == 11
    assert index.count_in_box((0, 0, 1024, 1024), [3], 10**6) == len(
        index.ids_in_box((0, 0, 1024, 1024), [3], 10**6)[0]
    )
    index.close()


def test_nucleus_details_carry_the_export_number(client, csv_rows):
    row = csv_rows[len(csv_rows) // 2]
    x, y = float(row["centroid_x"]), float(row["centroid_y"])
    doc = unpack_nuclei(
        client.get(f"/api/slides/cmu_crop/nuclei?bbox={x - 1},{y - 1},{x + 1},{y + 1}").data
    )
    details = [client.get(f"/api/slides/cmu_crop/nucleus/{i:.0f}").json for i in doc["ids"]]
    (d,) = [d for d in details if d["number"] == int(row["id"])]
    assert d["class"]["name"] == row["type_name"]
    assert d["centroid"] == pytest.approx([x, y], abs=0.01)
    assert d["area_px"] == pytest.approx(float(row["area"]), rel=1e-3)
    assert d["eccentricity"] == pytest.approx(float(row["eccentricity"]), abs=1e-3)


def test_geojson_of_a_view_is_the_exported_features(client, real_out):
    r = client.get("/api/slides/cmu_crop/nuclei.geojson?bbox=100,200,500,600&types=3,4")
    assert r.status_code == 200 and r.mimetype == "application/geo+json"
    assert "attachment" in r.headers["Content-Disposition"]
    got = r.json
    exported = json.loads(gzip.decompress((real_out / "cmu_crop.geojson.gz").read_bytes()))
    by_id = {f["properties"]["measurements"]["Nucleus ID"]: f for f in exported["features"]}
    assert got["features"] and not got["hovernet"]["truncated"]
    for feature in got["features"]:
        assert feature == by_id[feature["properties"]["measurements"]["Nucleus ID"]]
        assert feature["properties"]["classification"]["name"] in ("epithelial", "spindle-shaped")
    # every exported nucleus of those classes whose outline meets the box is there
    from shapely.geometry import box, shape

    want = {
        nid
        for nid, f in by_id.items()
        if f["properties"]["classification"]["name"] in ("epithelial", "spindle-shaped")
        and shape(f["geometry"]).intersects(box(101, 201, 499, 599))
    }
    assert want <= {f["properties"]["measurements"]["Nucleus ID"] for f in got["features"]}


def test_density_route_sums_to_the_nuclei(client, real_out):
    doc = client.get("/api/slides/cmu_crop/density").json
    rows, cols = doc["shape"]
    data = np.frombuffer(base64.b64decode(doc["counts"]), "<u2")
    summary = json.loads((real_out / "cmu_crop.summary.json").read_text())
    assert data.size == len(doc["classes"]) * rows * cols and data.sum() == summary["nuclei"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/slides/cmu_crop/nuclei",
        "/api/slides/cmu_crop/nuclei?bbox=1,2,3",
        "/api/slides/cmu_crop/nuclei?bbox=1,2,3,4,5",
        "/api/slides/cmu_crop/nuclei?bbox=a,b,c,d",
        "/api/slides/cmu_crop/nuclei?bbox=nan,0,10,10",
        "/api/slides/cmu_crop/nuclei?bbox=0,0,inf,10",
        "/api/slides/cmu_crop/nuclei?bbox=10,0,5,10",
        "/api/slides/cmu_crop/nuclei?bbox=0,0,1e300,10",
        "/api/slides/cmu_crop/nuclei?bbox=0,0,10,10&types=9",
        "/api/slides/cmu_crop/nuclei?bbox=0,0,10,10&types=1;drop",
        "/api/slides/cmu_crop/nuclei.geojson?bbox=0,0",
        "/api/slides/cmu_crop/tiles/11/0_0.jpg",
        "/api/slides/cmu_crop/tiles/x/0_0.jpg",
        "/api/slides/cmu_crop/tiles/-1/0_0.jpg",
        "/api/slides/cmu_crop/tiles/10/4_0.jpg",
        "/api/slides/cmu_crop/tiles/10/0_99999999999.jpg",
        "/api/slides/cmu_crop/nucleus/abc",
        "/api/slides/cmu_crop/nucleus/0",
        "/api/slides/cmu_crop/nucleus/-3",
        "/api/slides/cmu_crop/nucleus/1e3",
        "/api/slides/cmu_crop/nucleus/99999999999999999999999",
    ],
)
def test_bad_parameters_get_400_with_a_message_and_no_traceback(client, url):
    r = client.get(url)
    assert r.status_code == 400, (url, r.status_code, r.data[:200])
    assert r.json["error"] and b"Traceback" not in r.data and b'File "' not in r.data


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ("1,2,3", "'1,2,3' is not four numbers"),
        ("a,b,c,d", "'a,b,c,d' is not four numbers"),
        ("nan,0,10,10", "'nan,0,10,10' is not four finite numbers (nan or inf)"),
        ("10,0,5,10", "'10,0,5,10' is empty"),
        ("0,0,1e300,10", "'0,0,1e300,10' reaches too far past the slide, which is 1024 x 1024 "
         "level-0 px: keep x within -1024..2048 and y within -1024..2048"),
        ("-1025,0,10,10", "'-1025,0,10,10' reaches too far past the slide"),
        ("0,0,10,2049", "'0,0,10,2049' reaches too far past the slide"),
    ],
)  # fmt: skip
def test_a_bad_bbox_is_named_with_what_is_wrong_and_the_limits(client, bbox, message):
    r = client.get(f"/api/slides/cmu_crop/nuclei.geojson?bbox={bbox}")
    assert r.status_code == 400 and f"bbox {message}" in r.json["error"], r.json
    assert "x0 < x1" in r.json["error"] or "keep x within" in r.json["error"]
    r = client.get(f"/api/slides/cmu_crop/nuclei?bbox=0,0,10,10&view={bbox}")
    assert r.status_code == 400 and f"view {message}" in r.json["error"], r.json


def test_a_box_reaching_past_the_slide_within_the_limits_is_answered(client):
    inside = unpack_nuclei(client.get("/api/slides/cmu_crop/nuclei?bbox=0,0,1024,1024").data)
    wide = unpack_nuclei(client.get("/api/slides/cmu_crop/nuclei?bbox=-1024,-5,2048,2048").data)
    assert inside["n"] == wide["n"] > 0


def test_an_unknown_nucleus_or_slide_is_404(client):
    assert client.get("/api/slides/cmu_crop/nucleus/999999").status_code == 404
    assert client.get("/api/slides/nothere").status_code == 404
    assert client.get("/api/slides/cmu_crop/tiles/10/0_0.png").status_code == 404


def test_a_failure_is_a_500_with_one_line_and_no_traceback(real_out, monkeypatch):
    slides = load_slides(real_out)
    app = create_app(slides)

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /etc/passwd")

    monkeypatch.setattr(slides[0].index, "query", broken)
    r = app.test_client().get("/api/slides/cmu_crop/nuclei?bbox=0,0,10,10")
    assert r.status_code == 500 and r.json == {
        "error": "internal error (RuntimeError); see the server's log"
    }
    slides[0].close()


def test_only_its_own_host_name_is_answered_when_bound_to_the_loopback(real_out):
    slides = load_slides(real_out)
    c = create_app(slides, allowed_hosts={"127.0.0.1", "localhost"}).test_client()
    assert c.get("/api/slides", headers={"Host": "localhost:8765"}).status_code == 200
    assert c.get("/api/slides", headers={"Host": "evil.example:8765"}).status_code == 403
    slides[0].close()


# -- what may be served ----------------------------------------------------------------------
def _raw_get(port: int, target: str) -> int:
    """The status of a GET sent byte for byte (no client-side normalisation of the path)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        head = sock.recv(200).decode("latin-1")
    return int(head.split()[1])


@pytest.fixture
def live_server(real_out, tmp_path):
    """The app on waitress over a copy of the output folder with links out of it planted."""
    out = tmp_path / "out"
    shutil.copytree(real_out, out)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(real_out / "cmu_crop.db", secret / "leak.db")
    (secret / "leak.summary.json").write_text((real_out / "cmu_crop.summary.json").read_text())
    (out / "leak.db").symlink_to(secret / "leak.db")
    (out / "leak.summary.json").symlink_to(secret / "leak.summary.json")
    (out / "static").symlink_to(secret)
    with pytest.warns(Warning, match="links out of"):
        slides = load_slides(out)
    with serving(create_app(slides), threads=2) as port:
        yield port, [s.name for s in slides]
    for s in slides:
        s.close()


@pytest.mark.parametrize(
    "target",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/%2E%2E%2Fserver.py",
        "/static/..%5cserver.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/openseadragon/../../index.py",
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/slides/..%2f..%2fetc%2fpasswd",
        "/api/slides/../index.py",
        "/api/slides/leak",
        "/api/slides/leak/tiles/0/0_0.jpg",
        "/api/slides/%2Fetc%2Fpasswd/nuclei?bbox=0,0,1,1",
        "/api/slides/cmu_crop.db",
        "/cmu_crop.db",
        "/static/cmu_crop.summary.json",
    ],
)
def test_traversal_absolute_paths_and_links_out_of_the_folder_are_404(live_server, target):
    port, names = live_server
    assert names == ["cmu_crop"]
    assert _raw_get(port, target) == 404


def test_the_page_and_its_packaged_files_are_served(live_server):
    port, _ = live_server
    for target in ["/", "/static/viewer.js", "/static/viewer.css",
                   "/static/openseadragon/openseadragon.min.js",
                   "/static/openseadragon/images/home_rest.png"]:  # fmt: skip
        assert _raw_get(port, target) == 200, target


# -- finding slides --------------------------------------------------------------------------
def test_a_moved_slide_is_named_with_the_fix_and_found_with_slide(real_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(real_out, out)
    summary = json.loads((out / "cmu_crop.summary.json").read_text())
    summary["slide"] = str(tmp_path / "gone" / "cmu_crop.tif")
    (out / "cmu_crop.summary.json").write_text(json.dumps(summary))
    with pytest.raises(HoverNetError, match="does not exist.*--slide"):
        load_slides(out)
    moved = real_out.parent / "cmu_crop.tif"
    for given in (moved, moved.parent):
        (s,) = load_slides(out, slide=given)
        assert s.image_path == moved
        s.close()
    with pytest.raises(HoverNetError, match="holds no finished slide"):
        load_slides(tmp_path)


def test_an_output_made_before_colours_were_recorded_takes_them_from_its_geojson(
    real_out, tmp_path
):
    out = tmp_path / "out"
    shutil.copytree(real_out, out)
    summary = json.loads((out / "cmu_crop.summary.json").read_text())
    del summary["type_info"]
    (out / "cmu_crop.summary.json").write_text(json.dumps(summary))
    (old,) = load_slides(out)
    (new,) = load_slides(real_out)
    assert old.classes() == new.classes() and len(new.classes()) == 5
    old.close()
    new.close()


def test_several_slides_are_listed(real_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(real_out, out)
    for suffix in (".db", ".summary.json"):
        shutil.copy(out / f"cmu_crop{suffix}", out / f"second{suffix}")
    slides = load_slides(out)
    names = [s["name"] for s in create_app(slides).test_client().get("/api/slides").json]
    assert names == ["cmu_crop", "second"]
    for s in slides:
        s.close()


def test_an_untyped_store_is_one_class_of_nuclei(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    synthetic_store(out / "plain.db", 400, spacing=12, region=120, slide_mpp=0.5, typed=False)
    summary = {"slide": str(SAMPLE), "dimensions": [240, 240], "slide_mpp": 0.5}
    (out / "plain.summary.json").write_text(json.dumps({**summary, "type_info": None}))
    slides = load_slides(out)
    c = create_app(slides).test_client()
    info = c.get("/api/slides/plain").json
    assert info["classes"] == [
        {"key": "none", "type": None, "name": "Nucleus", "colour": [255, 255, 0], "count": 400}
    ]
    doc = unpack_nuclei(c.get("/api/slides/plain/nuclei?bbox=0,0,100,100&types=none").data)
    assert doc["n"] > 30 and set(doc["types"].tolist()) == {-1}
    assert np.isnan(doc["type_prob"]).all()
    assert c.get("/api/slides/plain/density").json["classes"] == ["none"]
    assert unpack_nuclei(c.get("/api/slides/plain/nuclei?bbox=0,0,100,100&types=").data)["n"] == 0
    nid = int(doc["ids"][0])
    detail = c.get(f"/api/slides/plain/nucleus/{nid}").json
    assert detail["class"]["name"] == "Nucleus" and detail["type_prob"] is None
    for s in slides:
        s.close()


# -- the command -----------------------------------------------------------------------------
def test_view_command_refuses_a_folder_without_slides(tmp_path):
    from hovernet.cli import run

    assert run(["view", str(tmp_path), "--no-browser"]) == 2


def test_view_command_names_a_busy_port_and_the_fix(real_out, capsys):
    from hovernet.cli import run

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert run(["view", str(real_out), "--port", str(port), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port 0" in err


@pytest.mark.parametrize("ask_first", [True, False])
def test_view_command_serves_warns_for_other_hosts_and_stops_on_ctrl_c(real_out, ask_first):
    """Ctrl-C after a request, or at once (while the viewer counts the nuclei in a thread)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hovernet", "view", str(real_out), "--host", "0.0.0.0",
         "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DISPLAY": ""},
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        if ask_first:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/slides", timeout=30) as r:
                assert json.loads(r.read())[0]["name"] == "cmu_crop"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "cmu_crop" in line and "http://0.0.0.0:" in line
    assert "warning: --host 0.0.0.0: anyone on the network" in err
    assert proc.returncode == 130 and "viewer" in err.splitlines()[-1]
