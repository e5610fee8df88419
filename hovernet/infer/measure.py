"""Per-nucleus shape measurements and outlines from an instance map (pure: arrays in, numbers
and coordinates out)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.measure import regionprops

from hovernet.nuclei import MEASUREMENTS, Outline


def mask_outline(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Outline:
    """The outer boundary of the pixels of a binary mask, in pixel-corner coordinates.

    Pixel (row r, column c) is the square [c, c + 1] x [r, r + 1]; the result traces the edges
    of these squares, so a polygon filled by pixel centres (QuPath, the GeoJSON reader in
    hovernet.io.annotations) gives back exactly the mask's pixels, holes filled. One ring per
    8-connected piece; each ring is a list of (x, y) integer corners without the closing point,
    counter-clockwise in (x, y) (positive shoelace area), `offset` (x0, y0) added.

    How: OpenCV traces the border pixels of the mask up-sampled 2x; in that grid the border
    sub-pixel u of original pixel i is 2i (first half) or 2i + 1 (second half), and
    (u + 1) // 2 maps them to the pixel's outer corners i and i + 1.
    """
    import cv2

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    big = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    big = np.pad(big, 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings: Outline = []
    x0, y0 = offset
    for contour in contours:
        points = contour.reshape(-1, 2) - 1  # undo the padding
        corners = (points + 1) // 2
        ring = _clean_ring(corners)
        if len(ring) < 3:
            continue
        xs, ys = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
        area2 = np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys)
        if area2 < 0:
            ring = ring[::-1]
        rings.append([(int(x) + x0, int(y) + y0) for x, y in ring])
    return rings


def _clean_ring(corners: np.ndarray) -> np.ndarray:
    """Drop repeated consecutive points and points in the middle of straight runs."""
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


def nucleus_measurements(
    inst_map: np.ndarray,
    nuclei: Iterable[int],
    outlines: bool = True,
    offset: tuple[int, int] = (0, 0),
) -> dict[int, dict]:
    """Area, perimeter, eccentricity and solidity of each nucleus id in `nuclei`, in pixels,
    and (with `outlines`) its "outline": `mask_outline` of its pixels, `offset` (x0, y0) added.

    Computed by `skimage.measure.regionprops` on the instance map, which works on bounding-box
    crops. Area is the pixel count, perimeter the 4-connected boundary length
    (`regionprops.perimeter`), eccentricity that of the ellipse with the same second moments
    (0 = circle), solidity = area / area of the convex hull. An id absent from the map gets NaNs
    and an empty outline. The GeoJSON writer uses the outline as the nucleus polygon.
    """
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
                values["outline"] = mask_outline(region.image, (c0 + offset[0], r0 + offset[1]))
            out[region.label] = values
    empty = dict.fromkeys(MEASUREMENTS, float("nan"))
    if outlines:
        empty["outline"] = []
    return {i: out.get(i, dict(empty)) for i in sorted(wanted)}
