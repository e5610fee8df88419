"""The store's read-only API (`hovernet.io.store.StoreReader`) against what the writer stores,
and the level-0 GeoJSON Features that the export and the viewer share."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from support.view_helpers import synthetic_store

from hovernet.io.slide_exports import Level0Features
from hovernet.io.store import (
    ID_BATCH,
    NucleusStore,
    StoreReader,
    id_batches,
    rtree_copy_signature,
    write_rtree_copy,
)
from hovernet.io.writers import _plain

N = 1300  # nuclei: more than two batches of ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.db"
    synthetic_store(path, N, spacing=14, region=200)
    with NucleusStore(path, {}) as st:
        records = list(st.nuclei())
    return path, records


def test_id_batches_cover_the_ids_in_order_as_ints():
    ids = np.arange(2 * ID_BATCH + 7) * 3
    batches = list(id_batches(ids))
    assert [len(b) for b in batches] == [ID_BATCH, ID_BATCH, 7]
    assert sum(batches, []) == ids.tolist()
    assert all(type(i) is int for b in batches for i in b)
    assert list(id_batches([])) == []


def test_records_numbers_and_values_by_id_across_batches(store):
    path, records = store
    reader = StoreReader(path)
    number = {rec["store_id"]: n for n, rec in enumerate(records, start=1)}
    ids = [rec["store_id"] for rec in records][::-1] + [10**9]  # reversed, one not stored
    got = reader.records(ids)
    assert [r["store_id"] for r in got] == ids[:-1]
    assert reader.export_numbers(ids, reader.region_offsets()) == number
    values = reader.values(["area", "type_prob"], ids)
    want = {(r["measurements"]["area"], r["type_prob"]) for r in records}
    assert len(values) == N and set(values) == want
    assert sorted(reader.values(["area", "type_prob"])) == sorted(want)
    with pytest.raises(ValueError, match="not a nucleus value"):
        reader.values(["area; DROP TABLE nuclei"])
    assert reader.count() == N
    assert reader.id_bounds() == (min(number), max(number))
    assert reader.meta()["scale"] == 1.0
    reader.close()


def test_box_queries_through_the_own_rtree_and_a_copy_agree_with_a_scan(store, tmp_path):
    path, records = store
    copy = tmp_path / "copy.db"
    write_rtree_copy(path, copy)
    own, sidecar = StoreReader(path), StoreReader(path, rtree=copy)
    assert own.has_rtree() and rtree_copy_signature(copy) == own.signature()
    assert rtree_copy_signature(tmp_path / "missing.db") is None
    rng = np.random.default_rng(3)
    for _ in range(20):
        x0, y0 = rng.uniform(-20, 450, 2)
        box = (x0, y0, x0 + rng.uniform(1, 150), y0 + rng.uniform(1, 150))
        types = None if rng.random() < 0.5 else [2, None]
        want = {
            r["store_id"]
            for r in records
            if r["bbox"][1][1] > box[0]
            and r["bbox"][1][0] > box[1]
            and r["bbox"][0][1] < box[2]
            and r["bbox"][0][0] < box[3]
            and (types is None or r["type"] in types)
        }
        for reader in (own, sidecar):
            ids = reader.ids_in_box(box, types, limit=N)
            assert set(ids) == want and len(ids) == len(want)
            rows = reader.outlines_in_box(box, types, limit=N)
            assert [row[0] for row in rows] == ids
            assert reader.count_in_box(box, types, limit=N) == len(want)
        # the limit: at most limit + 1 rows say that more met the box
        if len(want) > 3:
            assert len(own.ids_in_box(box, types, limit=2)) == 3
            assert own.count_in_box(box, types, limit=2) == 3
    by_id = {r["store_id"]: r for r in records}
    for nid, t, p, area, ecc, sol, blob in own.outlines_in_box((0, 0, 60, 60)):
        rec = by_id[nid]
        assert (t, p, area) == (rec["type"], rec["type_prob"], rec["measurements"]["area"])
        assert (ecc, sol) == (rec["measurements"]["eccentricity"], rec["measurements"]["solidity"])
        np.testing.assert_array_equal(np.frombuffer(blob, np.int32).reshape(-1, 2), rec["contour"])
    own.close()
    sidecar.close()


def test_a_changed_store_has_another_signature(store, tmp_path):
    path, records = store
    changed = tmp_path / "changed.db"
    shutil.copy(path, changed)
    before = StoreReader(changed).signature()
    with NucleusStore(changed, {}) as st:
        st.add_region(999, (0, 0, 1, 1), [])
    assert StoreReader(changed).signature() != before


def test_centroid_grid_counts_each_nucleus_once_in_its_cell(store):
    path, records = store
    reader = StoreReader(path)
    types, counts = reader.centroid_grid(50.0, 4, 3)  # cells past the grid: its edge cells
    assert counts.shape == (len(types), 4, 3) and counts.dtype == np.uint32
    for k, t in enumerate(types):
        want = np.zeros((4, 3), np.uint32)
        for r in records:
            if r["type"] == t:
                cx, cy = r["centroid"]
                want[min(max(int(cy // 50), 0), 3), min(max(int(cx // 50), 0), 2)] += 1
        np.testing.assert_array_equal(counts[k], want)
    assert int(counts.sum()) == N
    reader.close()


def test_level0_features_text_is_the_json_of_the_feature(store):
    path, records = store
    meta = {"scale": 1.5, "nr_types": 5}
    info = {0: ("bg", (0, 0, 0)), 1: ("a", (255, 0, 0)), 2: ("b", (0, 255, 0))}
    features = Level0Features(meta, info, "slide")
    outlines = [
        None,  # the contour (shapely)
        [[[0, 0], [4, 0], [4, 3], [0, 3]]],  # one simple ring (written without shapely)
        [[[0, 0], [2, 0], [2, 2], [0, 2]], [[5, 5], [7, 5], [7, 8], [5, 8]]],  # two pieces
    ]
    for nid, (rec, outline) in enumerate(zip(records[:3], outlines, strict=True), start=1):
        rec = {**rec, "measurements": dict(rec["measurements"])}
        if outline is not None:
            rec["measurements"]["outline"] = outline
        feature = features.feature(nid, rec)
        assert features.text(nid, rec) == json.dumps(feature, default=_plain)
        props = feature["properties"]
        assert props["measurements"]["Nucleus ID"] == nid
        assert props["measurements"]["Area (px^2)"] == pytest.approx(
            rec["measurements"]["area"] * 1.5**2
        )
    ring = features.feature(
        2, {**records[1], "measurements": {**records[1]["measurements"], "outline": outlines[1]}}
    )
    assert ring["geometry"]["coordinates"][0][2] == (6.0, 4.5)  # corner (4, 3) at level 0
