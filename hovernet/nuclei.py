"""The nucleus record and its measurement schema, shared by inference, the writers and the store.

A nucleus record (what `hovernet.infer.postprocess.postprocess` returns per instance id) is a
dict with `bbox` ([[rmin, cmin], [rmax, cmax]], max exclusive), `centroid` ([x, y]), `contour`
(N x 2 int [x, y] through pixel centres), `type` and `type_prob` (None for an untyped model) and,
for typed models, `type_probs` (the mean softmax per class). Slide mode adds `xy` (the centroid
in level-0 pixels) and `measurements`.

Measurements (`hovernet.infer.measure.nucleus_measurements`) are the keys of MEASUREMENTS, in
pixels, plus an `outline` (rings of pixel-corner points); writers and the slide store list them
in this order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# name -> unit, in the order the CSV and GeoJSON writers and the slide store list them
MEASUREMENTS = {
    "area": "px^2",
    "perimeter": "px",
    "eccentricity": "",
    "solidity": "",
}

Outline = list[list[tuple[int, int]]]  # polygons, each a ring of (x, y) pixel-corner points
Nuclei = Mapping[int, Mapping[str, Any]]  # nucleus id -> record
Measurements = Mapping[int, Mapping[str, Any]]  # nucleus id -> {measurement: value, "outline"}
