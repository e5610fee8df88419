"""Pixel grids (hovernet.grids) and the grid changes of slide mode that go through them.

The `_old_*` functions are the formulas each call site wrote before `Grid` existed (regions.py's
TissueBoxes.count, slide_worker.py's mask_window / MaskWindow.contains / the level-0 xy,
hv_calibration.py's calibration_windows, slide_tissue.py's processed_mask, slide_exports.py's
level-0 bbox); the conversions through `Grid` must give exactly their results over many random
boxes, points and resolutions, ties included.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hovernet.errors import HoverNetError
from hovernet.grids import Grid
from hovernet.infer.hv_calibration import CALIBRATION_SIZE, calibration_windows
from hovernet.infer.regions import RegionPlan, TissueBoxes
from hovernet.infer.slide_tissue import processed_mask
from hovernet.infer.slide_worker import mask_window
from hovernet.io.slide_exports import _level0

N = 3000


def _old_count(mask: np.ndarray, scale: float, box) -> tuple[int, int]:
    h, w = mask.shape
    x0, y0, x1, y1 = box
    r0 = min(h, max(0, math.floor(y0 / scale)))
    c0 = min(w, max(0, math.floor(x0 / scale)))
    r1 = min(h, max(r0 + 1, math.ceil(y1 / scale)))
    c1 = min(w, max(c0 + 1, math.ceil(x1 / scale)))
    if r1 <= r0 or c1 <= c0 or y1 <= 0 or x1 <= 0:
        return 0, 0
    window = mask[r0:r1, c0:c1]
    return int(window.sum()), window.size


def _old_window(mask: np.ndarray, scale: float, box):
    x0, y0, x1, y1 = box
    h, w = mask.shape
    r0 = min(h - 1, max(0, math.floor(y0 / scale)))
    c0 = min(w - 1, max(0, math.floor(x0 / scale)))
    r1 = min(h, max(r0 + 1, math.ceil(y1 / scale) + 1))
    c1 = min(w, max(c0 + 1, math.ceil(x1 / scale) + 1))
    return mask[r0:r1, c0:c1], r0, c0


def _old_contains(window: np.ndarray, r0: int, c0: int, scale: float, x, y) -> bool:
    r = math.floor(y / scale) - r0
    c = math.floor(x / scale) - c0
    h, w = window.shape
    return bool(window[min(max(r, 0), h - 1), min(max(c, 0), w - 1)])


def _old_calibration_cell(scale: float, box):
    x0, y0, x1, y1 = box
    r0, r1 = math.floor(y0 / scale), math.ceil(y1 / scale)
    c0, c1 = math.floor(x0 / scale), math.ceil(x1 / scale)
    return c0, r0, c1, r1


def _old_centred(scale: float, box):
    x0, y0, x1, y1 = box
    r0, r1 = math.ceil(y0 / scale - 0.5), math.ceil(y1 / scale - 0.5)
    c0, c1 = math.ceil(x0 / scale - 0.5), math.ceil(x1 / scale - 0.5)
    return c0, r0, c1, r1


def _resolutions(rng: np.random.Generator) -> tuple[float, float]:
    """(mask mpp, frame mpp) as slide mode makes them: a frame of a processing resolution
    halved with phases; a mask at a thumbnail's or a user mask's resolution, now and then an
    exact multiple of the frame's (ties on every pixel edge)."""
    proc = float(rng.choice([0.25, 0.5, 0.5015, 0.2527, rng.uniform(0.2, 1.2)]))
    frame = proc / int(rng.choice([1, 2]))
    if rng.random() < 0.3:
        return frame * int(rng.integers(1, 40)), frame
    slide = float(rng.choice([0.25, 0.2527, 0.499, rng.uniform(0.1, 1.0)]))
    return slide * float(rng.choice([16, 32, 64, rng.uniform(2, 80)])), frame


def _box(rng: np.random.Generator, extent: float, integral: bool):
    x0, y0 = rng.uniform(-0.1 * extent, extent, 2)
    x1, y1 = x0 + rng.uniform(0, 0.3 * extent), y0 + rng.uniform(0, 0.3 * extent)
    box = (x0, y0, x1, y1)
    return tuple(int(v) for v in box) if integral else tuple(float(v) for v in box)


def test_box_and_point_conversions_match_every_old_call_site():
    rng = np.random.default_rng(27)
    for i in range(N):
        mask_mpp, frame_mpp = _resolutions(rng)
        scale = mask_mpp / frame_mpp  # frame pixels per mask pixel, as the old sites took it
        mask_grid, frame = Grid(mask_mpp), Grid(frame_mpp)
        h, w = (int(v) for v in rng.integers(1, 60, 2))
        mask = rng.random((h, w)) < rng.uniform(0, 1)
        extent = max(h, w) * scale
        box = _box(rng, extent, integral=i % 2 == 0)
        assert frame.box_to(box, mask_grid) == _old_calibration_cell(scale, box)
        assert frame.centres_to(box, mask_grid) == _old_centred(scale, box)
        assert TissueBoxes.of(mask, mask_grid, frame).count(box) == _old_count(mask, scale, box)
        if box[2] < box[0] or box[3] < box[1]:
            continue
        old, r0, c0 = _old_window(mask, scale, box)
        new = mask_window(mask, mask_grid, frame, box)
        assert np.array_equal(new.mask, old) and new.grid.origin == (c0, r0)
        # centroids anywhere in and near the box, and just short of its pixel edges
        points = [tuple(rng.uniform(box[:2], box[2:]) + rng.normal(0, 2, 2)) for _ in range(8)]
        points += [(box[2] - 1e-9, box[3] - 1e-9), (box[0] + 1e-12, box[1])]
        for x, y in points:
            assert new.contains(x, y) == _old_contains(old, r0, c0, scale, x, y)


def test_points_to_level0_as_the_stored_xy():
    rng = np.random.default_rng(3)
    for _ in range(N):
        down = float(rng.uniform(0.5, 8)) if rng.random() < 0.8 else 2.0
        cx, cy = (float(v) for v in rng.uniform(0, 1e5, 2))
        old = [(cx + 0.5) * down - 0.5, (cy + 0.5) * down - 0.5]
        assert list(Grid(0.5, down).to_level0((cx, cy))) == old


def test_boxes_to_level0_as_the_exports_bound_them():
    """slide_exports' level-0 bbox: floor(rmin * scale) .. ceil(rmax * scale)."""
    rng = np.random.default_rng(5)
    for _ in range(N):
        down = float(rng.uniform(0.5, 8)) if rng.random() < 0.8 else float(rng.integers(1, 5))
        x0, y0 = (int(v) for v in rng.integers(0, 10**5, 2))
        box = (x0, y0, x0 + int(rng.integers(1, 200)), y0 + int(rng.integers(1, 200)))
        old = tuple(math.floor(v * down) for v in box[:2]) + tuple(
            math.ceil(v * down) for v in box[2:]
        )
        assert Grid(0.5, down).box_to_level0(box) == old


def test_rules_on_a_small_example():
    frame, mask = Grid(0.5), Grid(8.0)  # 16 frame pixels per mask pixel
    # outward: a box of frame pixels 16..40 touches mask pixels 1..3 (1 and 2)
    assert frame.box_to((16, 0, 40, 16), mask) == (1, 0, 3, 1)
    # centres: mask pixel 1 (centre 24) lies in 16..40, pixel 2 (centre 40) does not
    assert frame.centres_to((16, 0, 40, 16), mask) == (1, 0, 2, 1)
    assert frame.point_to((31.9, 32.0), mask) == (1, 2)
    # the other way: a mask box into the frame is exact
    assert mask.box_to((1, 0, 3, 1), frame) == (16, 0, 48, 16)


def test_origins_make_windows_of_a_grid():
    frame, mask = Grid(0.5, 4.0), Grid(8.0)
    region = frame.window(100, 40)  # a region read from frame pixel (100, 40)
    assert region.window(1, 2).origin == (101, 42)
    # a point of the region's own pixels is the whole frame's point plus the origin
    assert region.to_level0((0, 0)) == frame.to_level0((100, 40)) == (401.5, 161.5)
    assert region.box_to_level0((0, 0, 2, 2)) == (400, 160, 408, 168)
    assert region.point_to((12, 0), mask) == frame.point_to((112, 40), mask) == (7, 2)
    # a box into a window of the mask comes out in the window's own pixels
    assert frame.box_to((112, 40, 140, 50), mask.window(5, 1)) == (2, 1, 4, 3)


def test_a_grid_needs_a_positive_resolution():
    for mpp, level0 in ((0.0, None), (-1.0, None), (math.nan, None), (0.5, 0.0)):
        with pytest.raises(HoverNetError, match="positive resolution"):
            Grid(mpp, level0)
    with pytest.raises(HoverNetError, match="level-0 factor"):
        Grid(8.0).to_level0((1.0, 1.0))
    with pytest.raises(HoverNetError, match="level-0 factor"):
        Grid(8.0).box_to_level0((0, 0, 1, 1))


def test_region_of_a_slide_touching_tissue_of_a_coarse_mask():
    """A region at 0.5 um/px against a mask at 8 um/px: which mask pixels it touches."""
    mask = np.zeros((100, 200), bool)
    mask[40:50, 100:110] = True  # tissue at 800..880 um (x), 320..400 um (y)
    boxes = TissueBoxes.of(mask, Grid(8.0), Grid(0.5))
    # frame x 1500..1756 px covers 750..878 um: mask columns 93..110, rows 37..54
    assert boxes.count((1500, 600, 1756, 856)) == (10 * 10, 17 * 17)
    assert not boxes.touches((0, 0, 1024, 512))
    assert boxes.count((10**6, 0, 10**6 + 256, 256)) == (0, 0)  # beyond the mask: none
    # half of the touched mask pixels are tissue: 10 of 20 columns, 10 rows
    assert boxes.count((1600, 640, 1920, 800)) == (100, 200)
    assert boxes.count((1440, 640, 1920, 800)) == (100, 300)


def _old_processed_mask(plan: RegionPlan, mask, scale: float, indices) -> np.ndarray:
    covered = np.zeros(mask.shape, bool)
    for index in indices:
        c0, r0, c1, r1 = _old_centred(scale, plan.region(index).core)
        covered[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = True
    return mask & covered


def _old_calibration_windows(mask, scale: float, width: int, height: int):
    size, scored = CALIBRATION_SIZE, []
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            x1, y1 = min(width, x0 + size), min(height, y0 + size)
            c0, r0, c1, r1 = _old_calibration_cell(scale, (x0, y0, x1, y1))
            cell = mask[r0:r1, c0:c1]
            tissue = float(cell.mean()) if cell.size else 0.0
            if tissue > 0:
                scored.append((-tissue * (x1 - x0) * (y1 - y0), y0, x0, (x0, y0, x1, y1)))
    return [box for *_, box in sorted(scored)[:4]]


def test_processed_mask_and_calibration_windows_as_before():
    """The two slide-mode call sites that take a frame box to the mask, whole."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        mask_mpp, frame_mpp = _resolutions(rng)
        scale = mask_mpp / frame_mpp
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.uniform(0, 1)
        width, height = (max(1, int(v * scale)) for v in rng.uniform(0.5, 1.2, 2) * (w, h))
        plan = RegionPlan(width, height, int(rng.integers(16, 700)), int(rng.integers(0, 40)))
        indices = sorted(rng.choice(len(plan), int(rng.integers(0, len(plan) + 1)), False))
        new = processed_mask(plan, mask, Grid(mask_mpp), Grid(frame_mpp), indices)
        assert np.array_equal(new, _old_processed_mask(plan, mask, scale, indices))
        windows = calibration_windows(mask, Grid(mask_mpp), Grid(frame_mpp), width, height)
        assert windows == _old_calibration_windows(mask, scale, width, height)


def test_level0_bbox_of_a_stored_record():
    """The CSV's level-0 bbox ([[rmin, cmin], [rmax, cmax]]) through the store's grid."""
    rng = np.random.default_rng(8)
    for _ in range(N):
        down = float(rng.uniform(0.5, 8)) if rng.random() < 0.8 else float(rng.integers(1, 5))
        rmin, cmin = (int(v) for v in rng.integers(0, 10**5, 2))
        rmax, cmax = rmin + int(rng.integers(1, 90)), cmin + int(rng.integers(1, 90))
        rec = {"bbox": [[rmin, cmin], [rmax, cmax]], "xy": [1.0, 2.0], "measurements": {}}
        rec["measurements"] = {"area": 10.0, "perimeter": 4.0}
        out, _ = _level0(rec, Grid(0.5, down))
        assert out["bbox"] == [
            [math.floor(rmin * down), math.floor(cmin * down)],
            [math.ceil(rmax * down), math.ceil(cmax * down)],
        ]
