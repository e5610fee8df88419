"""Which pixel grid a box or a point is in, and the one way each moves to another grid.

A slide is seen through several pixel grids (docs/glossary.md):

- level 0, the file's full resolution;
- the processing grid, the network maps' pixels (`maps_mpp`);
- the outline grid (the frame), where nuclei are outlined and stored: the processing grid, or
  twice as fine with sub-pixel phases;
- the tissue-mask grid, the pixels of a thumbnail's mask or of the user's mask image.

A `Grid` is a resolution, `mpp` (microns per pixel), optionally its factor to level 0,
`level0` (level-0 pixels per pixel, as the slide's sizes give it), and an `origin`: the
whole-slide pixel, at the same resolution, that is this grid's pixel (0, 0). A window of a
grid (a region's read box, the part of a mask under a region) is the grid with the window's
top-left corner as its origin.

Coordinates. A box (x0, y0, x1, y1) is in pixel edges: pixel i spans [i, i + 1), so a box of
whole pixels runs from x0 to x1 exclusive. A point (a centroid) is in pixel indices: pixel i
holds the points [i, i + 1) as well, and its centre is i.

Between two grids, `s = dst.mpp / src.mpp` source pixels make one destination pixel (the
resolutions' ratio: the processing and mask grids of a slide are related by their mpp). One
rule per question, none other anywhere:

- a box to the pixels it touches (`Grid.box_to`): boxes grow outward, floor of the start and
  ceil of the end, floor(x0 / s) .. ceil(x1 / s); to level 0 (`Grid.box_to_level0`) the same
  with the level-0 factor, floor(x0 * level0) .. ceil(x1 * level0);
- a box to the pixels it holds, for areas (`Grid.centres_to`): the pixels whose centre lies in
  it, ceil(x0 / s - 0.5) .. ceil(x1 / s - 0.5), so that boxes that tile one grid share the other
  grid's pixels without overlap;
- a point to the pixel it lies in (`Grid.point_to`): floor(x / s);
- a point to level 0 (`Grid.to_level0`): pixel centres to pixel centres,
  (x + 0.5) * level0 - 0.5, not rounded.

Results are in the destination grid's own coordinates (its origin subtracted) and are not cut to
any array: callers clip to the array they index. Pure, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from hovernet.errors import HoverNetError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixel edges
PixelBox = tuple[int, int, int, int]
Point = tuple[float, float]  # x, y


@dataclass(frozen=True)
class Grid:
    """A pixel grid over a slide: `mpp` microns per pixel, `level0` level-0 pixels per pixel
    (None: not needed), and the whole-slide pixel `origin` (x, y) that is its pixel (0, 0)."""

    mpp: float
    level0: float | None = None
    origin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        positive = math.isfinite(self.mpp) and self.mpp > 0
        if not positive or (self.level0 is not None and not self.level0 > 0):
            raise HoverNetError(
                f"a pixel grid needs a positive resolution, got {self.mpp!r} um/px and "
                f"{self.level0!r} level-0 pixels per pixel"
            )

    def window(self, x: int, y: int) -> Grid:
        """The grid of a window of this one whose top-left pixel is this grid's (x, y)."""
        return replace(self, origin=(self.origin[0] + x, self.origin[1] + y))

    def box_to(self, box: Box, dst: Grid) -> PixelBox:
        """The pixels of `dst` that `box` (in this grid) touches: floor / ceil, outward."""
        x0, y0, x1, y1 = self._whole(box)
        s = dst.mpp / self.mpp
        c0, r0 = math.floor(x0 / s), math.floor(y0 / s)
        return dst._own(c0, r0, math.ceil(x1 / s), math.ceil(y1 / s))

    def centres_to(self, box: Box, dst: Grid) -> PixelBox:
        """The pixels of `dst` whose centre lies in `box` (in this grid): an empty or inverted
        box where none does."""
        x0, y0, x1, y1 = self._whole(box)
        s = dst.mpp / self.mpp
        c0, r0 = math.ceil(x0 / s - 0.5), math.ceil(y0 / s - 0.5)
        return dst._own(c0, r0, math.ceil(x1 / s - 0.5), math.ceil(y1 / s - 0.5))

    def point_to(self, point: Point, dst: Grid) -> tuple[int, int]:
        """(column, row) of the pixel of `dst` that `point` (in this grid) lies in: floor."""
        x, y = point[0] + self.origin[0], point[1] + self.origin[1]
        s = dst.mpp / self.mpp
        return math.floor(x / s) - dst.origin[0], math.floor(y / s) - dst.origin[1]

    def to_level0(self, point: Point) -> Point:
        """`point` (in this grid) in level-0 pixel indices: pixel centres to pixel centres."""
        x, y = point[0] + self.origin[0], point[1] + self.origin[1]
        f = self._level0_factor()
        return (x + 0.5) * f - 0.5, (y + 0.5) * f - 0.5

    def box_to_level0(self, box: Box) -> PixelBox:
        """The level-0 pixels `box` (in this grid) touches: floor / ceil, outward, of the box
        times the level-0 factor."""
        x0, y0, x1, y1 = self._whole(box)
        f = self._level0_factor()
        return math.floor(x0 * f), math.floor(y0 * f), math.ceil(x1 * f), math.ceil(y1 * f)

    def _level0_factor(self) -> float:
        if self.level0 is None:
            raise HoverNetError("this pixel grid does not know its level-0 factor")
        return self.level0

    def _whole(self, box: Box) -> Box:
        """`box` in the whole-slide grid at this resolution."""
        ox, oy = self.origin
        return box[0] + ox, box[1] + oy, box[2] + ox, box[3] + oy

    def _own(self, x0: int, y0: int, x1: int, y1: int) -> PixelBox:
        """Whole-slide pixels of this resolution in this grid's own coordinates."""
        ox, oy = self.origin
        return x0 - ox, y0 - oy, x1 - ox, y1 - oy
