"""Region planning and nucleus ownership (hovernet.infer.regions)."""

from __future__ import annotations

import numpy as np
import pytest

from hovernet.config import GEOMETRY, ModelGeometry
from hovernet.errors import HoverNetError
from hovernet.grids import Grid
from hovernet.infer.regions import (
    NUCLEUS_MARGIN,
    Region,
    TissueBoxes,
    owned_nuclei,
    plan_regions,
)

FAST = GEOMETRY["fast"]


@pytest.mark.parametrize("size", [(1, 1), (1000, 700), (3280, 3281), (5000, 164)])
def test_cores_tile_the_image_exactly_once_and_reads_contain_them(size):
    width, height = size
    plan = plan_regions(width, height, FAST, 1000)
    assert plan.core % 164 == 0 and plan.margin == 164  # multiples of the 164 output square
    # at most as many regions per side as cores of 1000 need, less than a square larger
    assert plan.n_cols <= -(-width // 1000) and plan.n_rows <= -(-height // 1000)
    assert plan.core < 1000 + 164
    cover = np.zeros((height, width), np.int32)
    for region in plan.regions():
        x0, y0, x1, y1 = region.core
        rx0, ry0, rx1, ry1 = region.read
        cover[y0:y1, x0:x1] += 1
        assert 0 <= rx0 <= x0 < x1 <= rx1 <= width and 0 <= ry0 <= y0 < y1 <= ry1 <= height
        # margins are full unless clipped by the image edge
        assert rx0 == max(0, x0 - 164) and rx1 == min(width, x1 + 164)
        # every read box starts on the network's output grid: same windows as the whole image
        assert rx0 % FAST.output_size == 0 and ry0 % FAST.output_size == 0
    assert (cover == 1).all()


def test_no_region_is_a_sliver():
    """The demo mosaic at the default 3000: 2 x 2 regions of 3136, not 2 x 3 of 2912 whose
    last row is 110 pixels high (each inner border runs a margin of windows twice)."""
    lite = ModelGeometry("lite", 256, 224)
    plan = plan_regions(4440, 5934, lite, 3000)
    assert (plan.core, plan.n_cols, plan.n_rows) == (3136, 2, 2)
    for width, height in [(6000, 6001), (2913, 100), (100, 9000)]:
        plan = plan_regions(width, height, lite, 3000)
        last = min(r.core[2] - r.core[0] for r in plan.regions())
        assert last >= min(width, plan.core) // 2 or plan.n_cols == 1


def test_margin_covers_network_margin_and_widest_nucleus():
    original = GEOMETRY["original"]
    plan = plan_regions(5000, 5000, original, 2000)
    assert plan.margin % original.output_size == 0
    assert plan.margin >= original.margin + NUCLEUS_MARGIN
    assert plan_regions(100, 100, FAST, 50).core == 164  # at least one output square
    assert plan_regions(100, 100, FAST, 500, margin=1).margin == 164
    with pytest.raises(HoverNetError, match="region_size"):
        plan_regions(100, 100, FAST, 0)


def _rec(cx, cy, bbox):
    return {"centroid": [cx, cy], "bbox": bbox}


def test_ownership_by_centroid_in_core_half_open():
    region = Region(0, (100, 100, 200, 200), (50, 50, 250, 250))
    nuclei = {
        1: _rec(50.0, 50.0, [[40, 40], [60, 60]]),  # (100, 100): core corner, kept
        2: _rec(150.0, 50.0, [[40, 140], [60, 160]]),  # x = 200: next core's
        3: _rec(149.9, 149.9, [[140, 140], [160, 160]]),  # inside
        4: _rec(10.0, 10.0, [[0, 0], [20, 20]]),  # in the margin
    }
    keep, cut = owned_nuclei(nuclei, region, 1000, 1000)
    assert keep == [1, 3] and cut == 0


def test_every_point_is_owned_by_exactly_one_region():
    plan = plan_regions(1000, 700, ModelGeometry("fast", 40, 16), 100)
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0], [1000, 700], size=(500, 2))
    points[:20] = np.round(points[:20] / 96) * 96  # some exactly on core borders
    owners = np.zeros(len(points), int)
    for region in plan.regions():
        rx0, ry0 = region.read[:2]
        local = {i: _rec(x - rx0, y - ry0, [[1, 1], [2, 2]]) for i, (x, y) in enumerate(points)}
        keep, _ = owned_nuclei(local, region, 1000, 700)
        owners[keep] += 1
    assert (owners == 1).all()


def test_cut_nuclei_are_counted_only_at_inner_read_borders():
    region = Region(0, (0, 0, 100, 100), (0, 0, 150, 150))
    nuclei = {
        1: _rec(5.0, 50.0, [[40, 0], [60, 10]]),  # touches the image's left edge: not cut
        2: _rec(99.0, 50.0, [[40, 90], [60, 150]]),  # reaches the inner right read border: cut
    }
    assert owned_nuclei(nuclei, region, 1000, 1000) == ([1, 2], 1)
    assert owned_nuclei(nuclei, region, 150, 1000) == ([1, 2], 0)  # the border is the edge


def test_tissue_indices_from_a_coarse_mask():
    plan = plan_regions(1000, 1000, ModelGeometry("fast", 40, 16), 480)  # 3 x 3 cores of 480
    mask = np.zeros((100, 100), bool)  # one mask pixel = 10 processing pixels
    mask[60:62, 10:12] = True  # rows 600..620, cols 100..120: core (row 1, col 0)
    grids = Grid(5.0), Grid(0.5)  # the mask at 5 um/px, the regions at 0.5 um/px

    def indices(min_fraction: float = 0.0) -> list[int]:
        return plan.tissue_indices(TissueBoxes.of(mask, *grids), min_fraction)

    assert indices() == [3]
    mask[99, 99] = True  # the last, clipped core
    assert indices() == [3, 8]
    assert indices(min_fraction=0.5) == []
