"""What a post-processing worker does with one region of a slide: its maps -> the nuclei it
owns whose centroid lies in tissue, in whole-slide coordinates, with their measurements.

Torch-free (numpy, OpenCV, SciPy, scikit-image), so that a spawned worker does not import
torch (`hovernet.infer.workers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hovernet.infer.features import nucleus_features
from hovernet.infer.maps import PredMaps, maps_to_nuclei
from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.regions import Region, owned_nuclei


@dataclass(frozen=True)
class MaskWindow:
    """The part of a tissue mask under one region: `mask[r0:, c0:]` cut to the region, one mask
    pixel covering `scale` frame pixels per side."""

    mask: np.ndarray
    r0: int
    c0: int
    scale: float

    def contains(self, x: float, y: float) -> bool:
        """Whether frame point (x, y) (a centroid, whole-slide frame pixels) lies in tissue."""
        r = math.floor(y / self.scale) - self.r0
        c = math.floor(x / self.scale) - self.c0
        h, w = self.mask.shape
        return bool(self.mask[min(max(r, 0), h - 1), min(max(c, 0), w - 1)])


def mask_window(mask: np.ndarray, scale: float, box: tuple[int, int, int, int]) -> MaskWindow:
    """The window of `mask` under the frame box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    h, w = mask.shape
    r0 = min(h - 1, max(0, math.floor(y0 / scale)))
    c0 = min(w - 1, max(0, math.floor(x0 / scale)))
    r1 = min(h, max(r0 + 1, math.ceil(y1 / scale) + 1))
    c1 = min(w, max(c0 + 1, math.ceil(x1 / scale) + 1))
    return MaskWindow(np.ascontiguousarray(mask[r0:r1, c0:c1]), r0, c0, scale)


@dataclass
class RegionJob:
    """One region's maps and where it lies; pickled to a worker."""

    region: Region
    maps: PredMaps
    nr_types: int | None
    width: int  # the slide at the frame's resolution
    height: int
    scale: float  # level-0 pixels per frame pixel
    proc_mpp: float | None = None  # resolution of the maps (scales the watershed's constants)
    # sub-pixel phases: the merged nucleus probability at the region's pixels (twice as fine
    # as the maps), to which the nuclei are mapped back; None: the maps are at its pixels
    prob: np.ndarray | None = None
    tissue: MaskWindow | None = None  # the tissue mask under the region; None: all tissue
    ranges: list[float] | None = None  # the slide's HV normalisation extremes (hv_ranges)
    # the region's RGB pixels at the resolution nuclei are outlined at (the frame: twice the
    # processing resolution with phases), for the colour features; None: no colour features
    image: np.ndarray | None = None
    image_mpp: float | None = None  # um/px of `image` (the frame's)


def region_nuclei(job: RegionJob) -> tuple[list[dict], int]:
    """Post-process one region: its owned nuclei whose centroid lies in the tissue mask, in
    whole-slide coordinates, and the count of owned nuclei cut by the region's border."""
    shape = job.maps.pred_map.shape if job.prob is None else job.prob.shape
    inst_map, nuclei = maps_to_nuclei(
        job.maps, job.nr_types, job.proc_mpp, shape, job.prob, job.ranges
    )
    keep, cut = owned_nuclei(nuclei, job.region, job.width, job.height)
    rx0, ry0 = job.region.read[:2]
    if job.tissue is not None:
        keep = [
            n
            for n in keep
            if job.tissue.contains(nuclei[n]["centroid"][0] + rx0, nuclei[n]["centroid"][1] + ry0)
        ]
    # outlines in whole-slide processing pixels (corner coordinates), as tile mode's GeoJSON
    shapes = nucleus_measurements(inst_map, keep, offset=(rx0, ry0))
    if job.image is not None:  # the region's pixels: the same grid as the instance map
        colour = nucleus_features(job.image, inst_map, keep, job.image_mpp)
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
        # pixel i at the processing resolution covers level-0 [i * s, (i + 1) * s)
        rec["xy"] = [(cx + 0.5) * job.scale - 0.5, (cy + 0.5) * job.scale - 0.5]
        rec["measurements"] = shapes[nid]
        out.append(rec)
    return out, cut
