"""What a post-processing worker does with one region of a slide: its maps -> the nuclei it
owns whose centroid lies in tissue, in whole-slide coordinates, with their measurements.

Torch-free (numpy, OpenCV, SciPy, scikit-image), so that a spawned worker does not import
torch (`hovernet.infer.workers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hovernet.grids import Grid
from hovernet.infer.features import nucleus_features
from hovernet.infer.maps import PredMaps, maps_to_nuclei
from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.regions import Region, owned_nuclei


@dataclass(frozen=True)
class MaskWindow:
    """The part of a tissue mask under one region: its pixels are those of `grid`, the mask
    grid with the window's top-left mask pixel as origin; points are given in `frame`."""

    mask: np.ndarray
    grid: Grid
    frame: Grid

    def contains(self, x: float, y: float) -> bool:
        """Whether frame point (x, y) (a centroid, whole-slide frame pixels) lies in tissue."""
        c, r = self.frame.point_to((x, y), self.grid)
        h, w = self.mask.shape
        return bool(self.mask[min(max(r, 0), h - 1), min(max(c, 0), w - 1)])


def mask_window(
    mask: np.ndarray, grid: Grid, frame: Grid, box: tuple[int, int, int, int]
) -> MaskWindow:
    """The window of `mask` (pixels of `grid`) under the box (x0, y0, x1, y1) of `frame`: the
    mask pixels the box touches (`Grid.box_to`) and one more at the far end of each axis, so
    that a centroid just short of the box's end is inside even where its ratio rounds up."""
    h, w = mask.shape
    c0, r0, c1, r1 = frame.box_to(box, grid)
    r0, c0 = min(h - 1, max(0, r0)), min(w - 1, max(0, c0))
    r1, c1 = min(h, max(r0 + 1, r1 + 1)), min(w, max(c0 + 1, c1 + 1))
    return MaskWindow(np.ascontiguousarray(mask[r0:r1, c0:c1]), grid.window(c0, r0), frame)


@dataclass
class RegionJob:
    """One region's maps and where it lies; pickled to a worker."""

    region: Region
    maps: PredMaps
    nr_types: int | None
    width: int  # the slide in the outline grid (the frame)
    height: int
    frame: Grid  # the outline grid: boxes, outlines and `image` are in its pixels
    maps_mpp: float | None = None  # resolution of the maps (scales the watershed's constants)
    # sub-pixel phases: the merged nucleus probability at the region's pixels (twice as fine
    # as the maps), to which the nuclei are mapped back; None: the maps are at its pixels
    prob: np.ndarray | None = None
    tissue: MaskWindow | None = None  # the tissue mask under the region; None: all tissue
    ranges: list[float] | None = None  # the slide's HV normalisation extremes (hv_ranges)
    # the region's RGB pixels in the outline grid (twice the processing resolution with
    # phases), for the colour features; None: no colour features
    image: np.ndarray | None = None


def region_nuclei(job: RegionJob) -> tuple[list[dict], int]:
    """Post-process one region: its owned nuclei whose centroid lies in the tissue mask, in
    whole-slide coordinates, and the count of owned nuclei cut by the region's border."""
    shape = job.maps.pred_map.shape if job.prob is None else job.prob.shape
    inst_map, nuclei = maps_to_nuclei(
        job.maps, job.nr_types, job.maps_mpp, shape, job.prob, job.ranges
    )
    keep, cut = owned_nuclei(nuclei, job.region, job.width, job.height)
    rx0, ry0 = job.region.read[:2]
    if job.tissue is not None:
        keep = [
            n
            for n in keep
            if job.tissue.contains(nuclei[n]["centroid"][0] + rx0, nuclei[n]["centroid"][1] + ry0)
        ]
    # outlines in whole-slide outline-grid pixels (corner coordinates), as tile mode's GeoJSON
    shapes = nucleus_measurements(inst_map, keep, offset=(rx0, ry0))
    if job.image is not None:  # the region's pixels: the same grid as the instance map
        colour = nucleus_features(job.image, inst_map, keep, job.frame.mpp)
        for nid, values in colour.items():
            shapes[nid].update(values)
    out = []
    for nid in keep:
        rec = nuclei[nid]
        (rmin, cmin), (rmax, cmax) = rec["bbox"]
        cx, cy = rec["centroid"][0] + rx0, rec["centroid"][1] + ry0
        rec["bbox"] = [[rmin + ry0, cmin + rx0], [rmax + ry0, cmax + rx0]]
        rec["centroid"] = [cx, cy]
        rec["contour"] = np.asarray(rec["contour"], np.int32) + np.array([rx0, ry0], np.int32)
        rec["xy"] = list(job.frame.to_level0((cx, cy)))
        rec["measurements"] = shapes[nid]
        out.append(rec)
    return out, cut
