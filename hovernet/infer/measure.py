"""Per-nucleus shape measurements from an instance map (pure: arrays in, numbers out)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.measure import regionprops

# name -> unit, in the order the CSV and GeoJSON writers list them
MEASUREMENTS = {
    "area": "px^2",
    "perimeter": "px",
    "eccentricity": "",
    "solidity": "",
}


def nucleus_measurements(
    inst_map: np.ndarray, nuclei: Iterable[int]
) -> dict[int, dict[str, float]]:
    """Area, perimeter, eccentricity and solidity of each nucleus id in `nuclei`, in pixels.

    Computed by `skimage.measure.regionprops` on the instance map, which works on bounding-box
    crops. Area is the pixel count, perimeter the 4-connected boundary length
    (`regionprops.perimeter`), eccentricity that of the ellipse with the same second moments
    (0 = circle), solidity = area / area of the convex hull. An id absent from the map gets NaNs.
    """
    wanted = {int(i) for i in nuclei}
    out: dict[int, dict[str, float]] = {}
    for region in regionprops(np.asarray(inst_map)):
        if region.label in wanted:
            out[region.label] = {
                "area": float(region.area),
                "perimeter": float(region.perimeter),
                "eccentricity": float(region.eccentricity),
                "solidity": float(region.solidity),
            }
    nan = dict.fromkeys(MEASUREMENTS, float("nan"))
    return {i: out.get(i, dict(nan)) for i in sorted(wanted)}
