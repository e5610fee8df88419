"""Region planning and nucleus ownership for whole-slide inference (pure, no I/O).

A slide, in its outline grid (docs/glossary.md), is cut into square *cores* that tile it once.
Each region reads its core plus a *margin* on every side (clipped to the slide), runs the
network and post-processing on that, and keeps exactly the nuclei whose centroid lies in its
core. A nucleus that straddles two cores is found whole by both regions (the margin is wider
than any nucleus) and kept by one, so no nucleus is lost, doubled or cut at a seam.

Core and margin are whole multiples of the network's output size and cores start at multiples
of it, so the network windows of every region lie on the same global grid as whole-image tile
mode's windows: inside a core, a region's network maps are exactly those of the whole image.
At the slide's edges regions are clipped and mirror-padded like a whole image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from hovernet.config import ModelGeometry
from hovernet.errors import HoverNetError
from hovernet.grids import Grid

# widest nucleus (pixels at the processing resolution) a region must see whole beyond its core
NUCLEUS_MARGIN = 96


@dataclass(frozen=True)
class Region:
    """One region: `core` and `read` boxes (x0, y0, x1, y1), outline-grid pixels."""

    index: int
    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]


@dataclass(frozen=True)
class RegionPlan:
    """The region grid of a `width` x `height` image (the slide in its outline grid)."""

    width: int
    height: int
    core: int
    margin: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise HoverNetError(
                f"cannot plan regions of an empty {self.width} x {self.height} slide"
            )
        if self.core < 1 or self.margin < 0:
            raise HoverNetError(f"region core {self.core} and margin {self.margin} must be > 0")

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.core)

    @property
    def n_rows(self) -> int:
        return math.ceil(self.height / self.core)

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def region(self, index: int) -> Region:
        if not 0 <= index < len(self):
            raise IndexError(index)
        row, col = divmod(index, self.n_cols)
        x0, y0 = col * self.core, row * self.core
        x1, y1 = min(x0 + self.core, self.width), min(y0 + self.core, self.height)
        m = self.margin
        read = (max(0, x0 - m), max(0, y0 - m), min(self.width, x1 + m), min(self.height, y1 + m))
        return Region(index, (x0, y0, x1, y1), read)

    def regions(self) -> list[Region]:
        return [self.region(i) for i in range(len(self))]

    def tissue_indices(self, tissue: TissueBoxes, min_fraction: float = 0.0) -> list[int]:
        """Indices of the regions whose core holds tissue: the mask pixels it touches
        (`tissue`, boxes in this plan's grid) are more than `min_fraction` tissue (any tissue
        at all with the default 0)."""
        out = []
        for region in self.regions():
            count, area = tissue.count(region.core)
            if area > 0 and count > min_fraction * area:
                out.append(region.index)
        return out


@dataclass(frozen=True, eq=False)
class TissueBoxes:
    """How much tissue a box of `image` pixels touches, from the integral image of a boolean
    tissue mask whose pixels are those of `grid` (the mask grid)."""

    integral: np.ndarray  # (h + 1) x (w + 1) cumulative sums of the mask
    grid: Grid  # the mask's pixels
    image: Grid  # the pixels boxes are given in (the outline grid)

    def __post_init__(self) -> None:
        if self.integral.ndim != 2 or min(self.integral.shape) < 2:
            raise HoverNetError(
                f"tissue mask integral of shape {self.integral.shape}: expected a non-empty "
                "2-D mask"
            )

    @classmethod
    def of(cls, mask: np.ndarray, grid: Grid, image: Grid) -> TissueBoxes:
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 2 or mask.size == 0:
            raise HoverNetError(f"tissue mask of shape {mask.shape}: expected a 2-D mask")
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = mask.cumsum(0).cumsum(1)
        return cls(integral, grid, image)

    def count(self, box: tuple[float, float, float, float]) -> tuple[int, int]:
        """(tissue mask pixels, all mask pixels) that the box (x0, y0, x1, y1) touches
        (`Grid.box_to`, cut to the mask and at least one pixel wide; a box outside the mask
        touches none)."""
        h, w = self.integral.shape[0] - 1, self.integral.shape[1] - 1
        c0, r0, c1, r1 = self.image.box_to(box, self.grid)
        r0, c0 = min(h, max(0, r0)), min(w, max(0, c0))
        r1, c1 = min(h, max(r0 + 1, r1)), min(w, max(c0 + 1, c1))
        if r1 <= r0 or c1 <= c0 or box[3] <= 0 or box[2] <= 0:
            return 0, 0
        ii = self.integral
        return int(ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]), (r1 - r0) * (c1 - c0)

    def touches(self, box: tuple[float, float, float, float]) -> bool:
        return self.count(box)[0] > 0


def plan_regions(
    width: int, height: int, geometry: ModelGeometry, region_size: int, margin: int | None = None
) -> RegionPlan:
    """A region grid aligned to the network's output grid.

    The core side is a multiple of `geometry.output_size` (at least one) that shares the image
    evenly among as many regions per side as cores of `region_size` would need: each side has
    ceil(side / region_size) regions, and the core is the smallest multiple that covers the
    longer share, so it exceeds `region_size` by less than one output square and no region is
    a sliver. Every inner border costs a margin of network windows twice: on the 4440 x 5934
    demo mosaic at 3000, 4 regions of 3136 run 7 % fewer windows than 6 of 2912 (rounded down).
    `margin` defaults to the smallest multiple of the output square that covers the network's
    own margin plus `NUCLEUS_MARGIN`, and is rounded up to a multiple otherwise.
    """
    step = geometry.output_size
    if region_size < 1:
        raise HoverNetError(f"--region_size must be positive, got {region_size}")
    share = max(math.ceil(side / math.ceil(side / region_size)) for side in (width, height))
    core = max(step, math.ceil(share / step) * step)
    if margin is None:
        margin = geometry.margin + NUCLEUS_MARGIN
    if margin < 0:
        raise HoverNetError(f"region margin must be >= 0, got {margin}")
    margin = math.ceil(margin / step) * step
    return RegionPlan(width, height, core, margin)


def owned_nuclei(
    nuclei: Mapping[int, Mapping[str, Any]], region: Region, width: int, height: int
) -> tuple[list[int], int]:
    """(ids this region keeps, how many of those are cut by the read border).

    `nuclei` are records in the region's own coordinates (as `postprocess` returns them for the
    region's image). A nucleus is kept when its centroid lies in the core. One that is kept but
    touches a read border inside the image (not the image's edge) would be cut: it is still
    kept, and counted, so that callers can warn that the margin is too narrow.
    """
    rx0, ry0, rx1, ry1 = region.read
    x0, y0, x1, y1 = region.core
    keep, cut = [], 0
    for nid, rec in nuclei.items():
        cx, cy = rec["centroid"][0] + rx0, rec["centroid"][1] + ry0
        if not (x0 <= cx < x1 and y0 <= cy < y1):
            continue
        keep.append(int(nid))
        (rmin, cmin), (rmax, cmax) = rec["bbox"]
        if (
            (cmin == 0 and rx0 > 0)
            or (rmin == 0 and ry0 > 0)
            or (cmax == rx1 - rx0 and rx1 < width)
            or (rmax == ry1 - ry0 and ry1 < height)
        ):
            cut += 1
    return keep, cut
