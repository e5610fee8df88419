"""Per-nucleus colour and texture features (hovernet.infer.features) against an independent
computation on the same pixels: scikit-image's rgb2hed for the stain ODs, SciPy's exact
Euclidean distance transform for the ring, graycomatrix/graycoprops for the texture; on real
MoNuSeg and CoNSeP images with their annotated instance maps."""

from __future__ import annotations

import csv as csv_module
import json
import math
import re
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import DATA
from scipy import ndimage
from scipy.io import loadmat
from skimage.color import rgb2hed
from skimage.feature import graycomatrix, graycoprops
from support.slide_helpers import ArraySlide, dark_tissue

from hovernet.errors import HoverNetError
from hovernet.infer import features as F
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.io.pyramid import decode_rgb24
from hovernet.io.store import NucleusStore, records_by_id
from hovernet.model.standin import BlobNet
from hovernet.nuclei import FEATURES

STATS = {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max, "sum": np.sum}


def _case(folder: str, index: int, box: tuple[int, int, int, int]):
    """(RGB, instance map) of a crop (x0, y0, x1, y1) of a real annotated image."""
    labels = sorted((DATA / folder / "labels").glob("*_inst.tif"))[index]
    image = DATA / folder / "images" / labels.name.replace("_inst.tif", ".png")
    x0, y0, x1, y1 = box
    rgb = cv2.imread(str(image), cv2.IMREAD_COLOR)[y0:y1, x0:x1, ::-1]
    inst = tifffile.imread(labels).astype(np.int32)[y0:y1, x0:x1]
    return np.ascontiguousarray(rgb), inst


@pytest.fixture(scope="module")
def monuseg():
    return _case("monuseg", 2, (300, 300, 560, 540))


@pytest.fixture(scope="module")
def consep():
    return _case("consep_patches", 5, (0, 0, 256, 256))


def _od(rgb: np.ndarray) -> np.ndarray:
    """Decadic H and E OD from scikit-image: rgb2hed divides natural logs by ln(1e-6)."""
    return rgb2hed(rgb)[..., :2] * 6.0


def test_stain_od_is_rgb2hed_in_decadic_units(monuseg) -> None:
    rng = np.random.default_rng(0)
    rgb = np.concatenate(
        [monuseg[0].reshape(1, -1, 3), rng.integers(0, 256, (1, 5000, 3), dtype=np.uint8)],
        axis=1,
    )
    rgb[0, :4] = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [1, 2, 3]]
    np.testing.assert_allclose(F.stain_od(rgb), _od(rgb), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["monuseg", "consep"])
def test_nucleus_od_matches_rgb2hed(case, request) -> None:
    rgb, inst = request.getfixturevalue(case)
    ids = [int(i) for i in np.unique(inst) if i]
    out = F.nucleus_features(rgb, inst, ids, mpp=0.25)
    od = _od(rgb)
    assert len(ids) > 20
    for i in ids:
        pixels = od[inst == i]
        for k, stain in enumerate("he"):
            for stat, fn in STATS.items():
                want = fn(pixels[:, k])
                got = out[i][f"nucleus_{stain}_od_{stat}"]
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (i, stain, stat)


def _exact_distances(inst: np.ndarray, ids: list[int]) -> np.ndarray:
    """(n, H, W) exact Euclidean distance of every pixel to each nucleus."""
    return np.stack([ndimage.distance_transform_edt(inst != i) for i in ids])


@pytest.mark.parametrize("radius", [4.0, 8.0])
def test_ring_is_the_exact_band_owned_by_the_nearest_nucleus(monuseg, radius) -> None:
    _, inst = monuseg
    ids = [int(i) for i in np.unique(inst) if i]
    ring = F.ring_labels(inst, radius)
    band = ndimage.distance_transform_edt(inst == 0)
    np.testing.assert_array_equal(ring > 0, (band > 0) & (band <= radius))
    dist = _exact_distances(inst, ids)
    rows, cols = np.nonzero(ring)
    owner_d = dist[np.searchsorted(ids, ring[rows, cols]), rows, cols]
    best = np.sort(dist[:, rows, cols], axis=0)
    # OpenCV's 5 x 5 labelled transform approximates the nearest nucleus: never more than a
    # small fraction of a pixel farther, and the true nearest wherever it is clearly nearer
    assert np.all(owner_d <= best[0] + 0.25)
    clear = best[1] - best[0] > 0.5
    assert clear.mean() > 0.9
    assert np.all(owner_d[clear] == best[0][clear])


def test_ring_od_matches_rgb2hed_on_the_ring_without_glass(monuseg) -> None:
    rgb, inst = monuseg
    rgb = rgb.copy()
    rgb[:, :40] = 245  # glass beside the nuclei on the left: not in their rings
    ids = [int(i) for i in np.unique(inst) if i]
    mpp = 0.5
    out = F.nucleus_features(rgb, inst, ids, mpp=mpp, ring_um=2.0)
    ring = F.ring_labels(inst, 2.0 / mpp)
    glass = -np.log10(np.maximum(rgb / 255.0, 1e-6)).sum(axis=2) < F.GLASS_OD
    assert glass[:, :40].all() and ring[:, :40].any()
    od = _od(rgb)
    checked = 0
    for i in ids:
        pixels = od[(ring == i) & ~glass]
        for k, stain in enumerate("he"):
            for stat, fn in STATS.items():
                got = out[i][f"ring_{stain}_od_{stat}"]
                if not len(pixels):
                    assert math.isnan(got)
                    continue
                assert got == pytest.approx(fn(pixels[:, k]), rel=1e-9, abs=1e-12)
                checked += 1
    assert checked > 100


def _skimage_texture(h_od: np.ndarray, mask: np.ndarray) -> list[float] | None:
    """Contrast, homogeneity, entropy from graycomatrix on the nucleus's quantised H: pixels
    outside it get an extra level whose row and column are dropped."""
    levels = F.GLCM_LEVELS
    q = np.minimum(np.floor(h_od * levels / F.GLCM_OD_MAX), levels - 1).astype(np.uint8)
    q[~mask] = levels
    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    glcm = graycomatrix(q, [1], angles, levels=levels + 1, symmetric=True)[:levels, :levels]
    has = glcm.sum(axis=(0, 1))[0] > 0
    if not has.any():
        return None
    props = [graycoprops(glcm, p)[0][has].mean() for p in ("contrast", "homogeneity", "entropy")]
    return [float(v) for v in props]


@pytest.mark.parametrize("case", ["monuseg", "consep"])
def test_texture_matches_graycomatrix(case, request) -> None:
    rgb, inst = request.getfixturevalue(case)
    ids = [int(i) for i in np.unique(inst) if i]
    out = F.nucleus_features(rgb, inst, ids, mpp=0.25)
    h_od = _od(rgb)[..., 0]
    for i in ids:
        rows, cols = np.nonzero(inst == i)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        want = _skimage_texture(h_od[box], inst[box] == i)
        names = ("contrast", "homogeneity", "entropy")
        got = [out[i][f"nucleus_h_glcm_{p}"] for p in names]
        if want is None:
            assert all(math.isnan(v) for v in got)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=str(i))


def test_absent_ids_unknown_resolution_and_bad_input(consep) -> None:
    rgb, inst = consep
    present = int(inst.max())
    out = F.nucleus_features(rgb, inst, [present, 10**6], mpp=None)
    assert list(out[present]) == list(FEATURES)
    assert not math.isnan(out[present]["nucleus_h_od_mean"])
    assert math.isnan(out[present]["ring_e_od_mean"])  # no resolution: no ring width
    assert all(math.isnan(v) for v in out[10**6].values())
    empty = F.nucleus_features(rgb, np.zeros_like(inst), [1], 0.5)[1]
    assert all(math.isnan(v) for v in empty.values())
    with pytest.raises(HoverNetError, match="uint8 RGB"):
        F.nucleus_features(rgb[:-1], inst, [present], 0.5)


def test_features_of_a_crop_are_those_of_the_whole_map(monuseg) -> None:
    """Measuring a subset of the nuclei (as slide mode does per region) gives their values
    measured with all of them."""
    rgb, inst = monuseg
    ids = [int(i) for i in np.unique(inst) if i]
    every = F.nucleus_features(rgb, inst, ids, mpp=0.5)
    some = F.nucleus_features(rgb, inst, ids[::7], mpp=0.5)
    for i in ids[::7]:
        np.testing.assert_array_equal(list(some[i].values()), list(every[i].values()))


def test_a_uniform_disk_on_glass() -> None:
    """A disk of one colour on white glass: every pixel the same OD, no texture, no ring."""
    rgb = np.full((60, 60, 3), 255, np.uint8)
    rows, cols = np.mgrid[:60, :60]
    disk = (rows - 30) ** 2 + (cols - 30) ** 2 < 49
    rgb[disk] = (90, 60, 150)
    out = F.nucleus_features(rgb, disk.astype(np.int32), [1], mpp=0.25)[1]
    h, e = _od(np.array([[[90, 60, 150]]], np.uint8))[0, 0]
    n = int(disk.sum())
    for stain, od in (("h", h), ("e", e)):
        assert out[f"nucleus_{stain}_od_mean"] == pytest.approx(od, rel=1e-12)
        assert out[f"nucleus_{stain}_od_min"] == out[f"nucleus_{stain}_od_max"]
        assert out[f"nucleus_{stain}_od_std"] == pytest.approx(0, abs=1e-12)
        assert out[f"nucleus_{stain}_od_sum"] == pytest.approx(n * od, rel=1e-12)
        assert all(math.isnan(out[f"ring_{stain}_od_{s}"]) for s in STATS)  # all glass
    assert out["nucleus_h_glcm_contrast"] == 0
    assert out["nucleus_h_glcm_homogeneity"] == 1
    assert out["nucleus_h_glcm_entropy"] == 0
    rgb[~disk] = (230, 180, 220)  # pink cytoplasm around it: a ring of 2 um = 8 px at 0.25
    ring = F.nucleus_features(rgb, disk.astype(np.int32), [1], mpp=0.25)[1]
    band = ndimage.distance_transform_edt(~disk)
    assert ring["ring_e_od_sum"] / ring["ring_e_od_mean"] == pytest.approx((band <= 8).sum() - n)


# ----------------------------------------------------------------------------------------------
# in the outputs: tile mode, slide mode, the store


def _od_means(rgb: np.ndarray, inst: np.ndarray) -> dict[int, float]:
    """Independent haematoxylin OD mean per nucleus id of an instance map."""
    h = _od(rgb)[..., 0]
    return {int(i): float(h[inst == i].mean()) for i in np.unique(inst) if i}


def _csv(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv_module.DictReader(fh))


def _tile_run(folder, out, **kw):
    config = TileConfig((folder,), out, post_proc_workers=0, proc_mpp=0.5, **kw)
    return run_tile(BlobNet(), config, log=lambda line: None)


def test_tile_mode_writes_the_features_of_its_instance_map(monuseg, tmp_path) -> None:
    rgb, _ = monuseg
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "t.png"), rgb[..., ::-1])
    out = tmp_path / "out"
    assert _tile_run(folder, out).done["t"] > 10
    rows = _csv(out / "csv" / "t.csv")
    assert list(rows[0])[-len(FEATURES) :] == list(FEATURES)
    inst = loadmat(out / "mat" / "t.mat")["inst_map"]
    want = _od_means(rgb, inst)
    for row in rows:
        assert float(row["nucleus_h_od_mean"]) == pytest.approx(want[int(row["id"])], rel=1e-9)
        assert float(row["nucleus_h_od_sum"]) == pytest.approx(
            float(row["nucleus_h_od_mean"]) * float(row["area"]), rel=1e-9
        )
    assert any(row["ring_e_od_mean"] for row in rows)  # 2 um = 4 px at 0.5 um/px
    doc = json.loads((out / "qupath" / "t.geojson").read_text())
    for feature, row in zip(doc["features"], rows, strict=True):
        values = feature["properties"]["measurements"]
        assert values["Nucleus: Hematoxylin OD mean"] == float(row["nucleus_h_od_mean"])
        assert ("Ring: Eosin OD mean" in values) == (row["ring_e_od_mean"] != "")
    # off: shape only; the folder's outputs are then refused for a run with them
    plain = tmp_path / "plain"
    _tile_run(folder, plain, features=False)
    assert not set(FEATURES) & set(_csv(plain / "csv" / "t.csv")[0])
    doc = json.loads((plain / "qupath" / "t.geojson").read_text())
    assert not any(":" in k for k in doc["features"][0]["properties"]["measurements"])
    with pytest.raises(HoverNetError, match="features: False -> True.*--overwrite"):
        _tile_run(folder, plain)


def _slide_run(image, out, **kw):
    config = SlideConfig(out, proc_mpp=0.25, region_size=328, quiet=True, **kw)
    slide = ArraySlide(Path("s.svs"), image, 0.25)
    return run_slides(
        BlobNet(), [slide.path], config, log=lambda line: None,
        opener=lambda path, cfg: slide, tissue_fn=dark_tissue,
    )[0]  # fmt: skip


def test_slide_mode_features_match_its_label_map(tmp_path) -> None:
    labels = sorted((DATA / "monuseg" / "labels").glob("*_inst.tif"))[2]
    image = DATA / "monuseg" / "images" / labels.name.replace("_inst.tif", ".png")
    rgb = np.ascontiguousarray(cv2.imread(str(image))[200:800, 200:800, ::-1])
    out = tmp_path / "out"
    result = _slide_run(rgb, out, save_label_map=True, post_proc_workers=1)
    assert result.status == "done", result.reason
    rows = _csv(out / "s.csv")
    assert len(rows) > 50 and list(rows[0])[-len(FEATURES) :] == list(FEATURES)
    with tifffile.TiffFile(out / "s.instances.tif") as tif:
        inst = decode_rgb24(tif.pages[0].asarray())  # export numbers, as the CSV's ids
    want = _od_means(rgb, inst)
    # the label map is drawn from the contours (through pixel centres): where it has the
    # nucleus's area it has its pixels, and the features are those of the slide's pixels
    sizes = np.bincount(inst.ravel(), minlength=len(rows) + 1)
    same = [r for r in rows if sizes[int(r["id"])] == float(r["area"])]
    assert len(same) > 0.7 * len(rows)
    for r in same:
        assert float(r["nucleus_h_od_mean"]) == pytest.approx(want[int(r["id"])], rel=1e-9)
    with NucleusStore(out / "s.db", {}) as store:
        stored = next(store.nuclei())["measurements"]
    assert stored["nucleus_h_od_mean"] == float(rows[0]["nucleus_h_od_mean"])
    again = _slide_run(rgb, out, features=False, save_label_map=True)
    assert again.status == "failed"
    assert re.search("features: True -> False.*--overwrite", again.reason), again.reason
    plain = tmp_path / "plain"
    assert _slide_run(rgb, plain, features=False).status == "done"
    assert not set(FEATURES) & set(_csv(plain / "s.csv")[0])


def test_store_keeps_features_and_opens_older_stores(tmp_path) -> None:
    path = tmp_path / "s.db"
    rec = {
        "bbox": [[0, 0], [2, 2]], "centroid": [1.0, 1.0], "contour": [[0, 0], [1, 0], [1, 1]],
        "type": None, "type_prob": None, "xy": [1.0, 1.0],
        "measurements": {"area": 4.0, "perimeter": 6.0, "eccentricity": 0.0, "solidity": 1.0},
    }  # fmt: skip
    measured = dict(rec, measurements={**rec["measurements"], **dict.fromkeys(FEATURES, 0.5)})
    measured["measurements"]["ring_h_od_std"] = float("nan")
    with NucleusStore(path, {}) as store:
        store.add_region(0, (0, 0, 9, 9), [rec, measured])
        plain, colour = list(store.nuclei())
    assert not set(FEATURES) & set(plain["measurements"])
    assert math.isnan(colour["measurements"].pop("ring_h_od_std"))
    assert all(colour["measurements"][k] == 0.5 for k in FEATURES if k != "ring_h_od_std")
    # a store made before the features: read-only readers see none, a writer adds the columns
    with sqlite3.connect(path) as db:
        for name in FEATURES:
            db.execute(f"ALTER TABLE nuclei DROP COLUMN {name}")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        old = records_by_id(db, [1, 2])
    assert [set(FEATURES) & set(r["measurements"]) for r in old] == [set(), set()]
    with NucleusStore(path, {}) as store:
        assert len(list(store.nuclei())) == 2
        store.add_region(1, (9, 9, 18, 18), [measured])
        assert list(store.nuclei())[-1]["measurements"]["nucleus_h_od_mean"] == 0.5
