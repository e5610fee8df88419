"""Shape measurements: the vectorised `nucleus_measurements` against the regionprops code it
replaced (kept below as the reference), on real MoNuSeg, CoNSeP and DSB 2018 label maps and on
the instance maps the post-processing makes of the reference network outputs.

Tolerances: area, perimeter, solidity and outline identical (==); eccentricity within 1e-9
absolute (measured: at most 5e-14 on 26,507 real nuclei; its second central moments are summed
in another order than skimage's einsum).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DATA, REFERENCE
from skimage.measure import regionprops

from hovernet.errors import HoverNetError
from hovernet.infer.measure import mask_outline, nucleus_measurements
from hovernet.infer.postprocess import postprocess
from hovernet.nuclei import MEASUREMENTS

ECCENTRICITY_ATOL = 1e-9


# ----------------------------------------------------------------------------------------------
# the reference: the regionprops implementation as it was before the vectorised one


def _ref_mask_outline(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list:
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    big = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    big = np.pad(big, 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    x0, y0 = offset
    for contour in contours:
        points = contour.reshape(-1, 2) - 1
        corners = (points + 1) // 2
        ring = _ref_clean_ring(corners)
        if len(ring) < 3:
            continue
        xs, ys = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
        area2 = np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys)
        if area2 < 0:
            ring = ring[::-1]
        rings.append([(int(x) + x0, int(y) + y0) for x, y in ring])
    return rings


def _ref_clean_ring(corners: np.ndarray) -> np.ndarray:
    keep = np.any(corners != np.roll(corners, 1, axis=0), axis=1)
    ring = corners[keep] if keep.any() else corners[:1]
    if len(ring) < 3:
        return ring
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    d1, d2 = ring - prev, nxt - ring
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    dot = (d1 * d2).sum(axis=1)
    straight = (cross == 0) & (dot > 0)
    return ring[~straight]


def reference_measurements(inst_map, nuclei, outlines=True, offset=(0, 0)) -> dict:
    wanted = {int(i) for i in nuclei}
    out: dict[int, dict] = {}
    for region in regionprops(np.asarray(inst_map)):
        if region.label in wanted:
            values: dict = {
                "area": float(region.area),
                "perimeter": float(region.perimeter),
                "eccentricity": float(region.eccentricity),
                "solidity": float(region.solidity),
            }
            if outlines:
                r0, c0 = region.bbox[:2]
                values["outline"] = _ref_mask_outline(
                    region.image, (c0 + offset[0], r0 + offset[1])
                )
            out[region.label] = values
    empty = dict.fromkeys(MEASUREMENTS, float("nan"))
    if outlines:
        empty["outline"] = []
    return {i: out.get(i, dict(empty)) for i in sorted(wanted)}


# ----------------------------------------------------------------------------------------------


def assert_same(got: dict, expected: dict) -> None:
    """Identical ids, keys, area, perimeter, solidity and outlines; eccentricity to 1e-9."""
    assert list(got) == list(expected)
    for nid, ref in expected.items():
        values = got[nid]
        assert list(values) == list(ref), nid
        for key in ("area", "perimeter", "solidity"):
            if np.isnan(ref[key]):
                assert np.isnan(values[key]), (nid, key)
            else:
                assert values[key] == ref[key], (nid, key, values[key], ref[key])
                assert type(values[key]) is float
        if np.isnan(ref["eccentricity"]):
            assert np.isnan(values["eccentricity"])
        else:
            assert abs(values["eccentricity"] - ref["eccentricity"]) <= ECCENTRICITY_ATOL, nid
        if "outline" in ref:
            assert values["outline"] == ref["outline"], nid


def _labels(folder: str) -> list:
    return sorted((DATA / folder / "labels").glob("*_inst.tif"))


@pytest.mark.parametrize("index", [0, 5, 13, 22])
def test_monuseg_labels_match_regionprops(index: int) -> None:
    inst = tifffile.imread(_labels("monuseg")[index])  # uint16, as stored
    ids = np.unique(inst)[1:]
    assert len(ids) > 250
    got = nucleus_measurements(inst, ids, offset=(1000, 2000))
    assert_same(got, reference_measurements(inst, ids, offset=(1000, 2000)))
    # shapes that regionprops would describe as ellipses, lines and blobs all occur
    ecc = np.array([v["eccentricity"] for v in got.values()])
    solidity = np.array([v["solidity"] for v in got.values()])
    assert ecc.min() < 0.4 and ecc.max() > 0.95
    assert solidity.min() < 0.85 and solidity.max() > 0.97


def test_consep_and_dsb_labels_match_regionprops() -> None:
    files = _labels("consep_patches")[:40:2] + _labels("dsb2018_he")[:8]
    n = 0
    for path in files:
        inst = tifffile.imread(path).astype(np.int32)
        ids = np.unique(inst)[1:]
        assert_same(nucleus_measurements(inst, ids), reference_measurements(inst, ids))
        n += len(ids)
    assert n > 700


@pytest.mark.parametrize("case", ["untyped_0", "typed_7"])
def test_postprocessed_maps_match_regionprops(case: str) -> None:
    """The maps the pipeline measures: watershed output, nuclei cut by the tile edge."""
    pred_map = np.load(REFERENCE / f"postproc_{case}.npz")["pred_map"]
    inst_map, nuclei = postprocess(pred_map, nr_types=5 if case.startswith("typed") else None)
    edge = np.unique(np.concatenate([inst_map[0], inst_map[-1], inst_map[:, 0], inst_map[:, -1]]))
    assert len(edge) > 3  # some nuclei touch the border
    assert_same(nucleus_measurements(inst_map, nuclei), reference_measurements(inst_map, nuclei))


def test_subset_missing_ids_and_no_outlines() -> None:
    inst = tifffile.imread(_labels("consep_patches")[3]).astype(np.int32)
    ids = np.unique(inst)[1:]
    wanted = [int(i) for i in ids[::3]] + [int(ids.max()) + 5, 0]  # absent ids: NaNs
    for outlines in (True, False):
        got = nucleus_measurements(inst, wanted, outlines=outlines, offset=(7, -3))
        assert_same(got, reference_measurements(inst, wanted, outlines=outlines, offset=(7, -3)))
    assert np.isnan(got[0]["area"]) and "outline" not in got[0]
    assert nucleus_measurements(inst, []) == {}
    assert nucleus_measurements(np.zeros((0, 0), np.int32), [1])[1]["outline"] == []


def test_fragmented_labels_match_regionprops() -> None:
    """Labels in several pieces, with holes, one pixel wide, touching diagonally and the image
    edge: random maps, cut from real MoNuSeg labels so that pieces of nuclei are included."""
    rng = np.random.default_rng(0)
    inst = tifffile.imread(_labels("monuseg")[2]).astype(np.int32)
    for trial in range(120):
        h, w = rng.integers(1, 30, 2)
        r, c = rng.integers(0, 1000 - 30, 2)
        crop = inst[r : r + h, c : c + w] % 7  # several nuclei share a label
        if trial % 2:
            crop = np.where(rng.random((h, w)) < 0.3, rng.integers(0, 7, (h, w)), crop)
        ids = list(range(9))
        offset = tuple(int(v) for v in rng.integers(-100, 100, 2))
        got = nucleus_measurements(crop, ids, offset=offset)
        assert_same(got, reference_measurements(crop, ids, offset=offset))
        for i in ids:
            assert mask_outline(crop == i, offset) == _ref_mask_outline(crop == i, offset)


def test_outline_of_real_nuclei_equals_the_reference() -> None:
    inst = tifffile.imread(_labels("monuseg")[7]).astype(np.int32)
    for nid in np.unique(inst)[1:60]:
        mask = inst == nid
        assert mask_outline(mask, (3, 4)) == _ref_mask_outline(mask, (3, 4))


def test_float_map_is_refused() -> None:
    with pytest.raises(HoverNetError, match="integer"):
        nucleus_measurements(np.ones((4, 4)), [1])
