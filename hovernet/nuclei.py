"""The nucleus record and its measurement schema, shared by inference, the writers and the store.

A nucleus record (what `hovernet.infer.postprocess.postprocess` returns per instance id) is a
dict with `bbox` ([[rmin, cmin], [rmax, cmax]], max exclusive), `centroid` ([x, y]), `contour`
(N x 2 int [x, y] through pixel centres), `type` and `type_prob` (None for an untyped model) and,
for typed models, `type_probs` (the mean softmax per class). Slide mode adds `xy` (the centroid
in level-0 pixels) and `measurements`.

Measurements (`hovernet.infer.measure.nucleus_measurements`) are the keys of MEASUREMENTS, in
pixels, plus an `outline` (rings of pixel-corner points); writers and the slide store list them
in this order. With colour features on, the measurements also hold the keys of FEATURES
(`hovernet.infer.features.nucleus_features`: stain optical densities of the nucleus and of a
ring of cytoplasm, haematoxylin texture), listed after them.
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

# name -> unit: <compartment>_<stain>_od_<statistic> (compartment nucleus or ring, stain h =
# haematoxylin or e = eosin; OD is unitless, a sum is OD x pixel area), then the nucleus's
# haematoxylin GLCM texture (unitless)
FEATURES = {
    f"{part}_{stain}_od_{stat}": "px^2" if stat == "sum" else ""
    for part in ("nucleus", "ring")
    for stain in ("h", "e")
    for stat in ("mean", "std", "min", "max", "sum")
} | {f"nucleus_h_glcm_{prop}": "" for prop in ("contrast", "homogeneity", "entropy")}


def _feature_label(name: str, unit: str) -> str:
    """QuPath-style GeoJSON name of a FEATURES key: nucleus_h_od_mean -> "Nucleus: Hematoxylin
    OD mean", ring_e_od_sum -> "Ring: Eosin OD sum (px^2)", nucleus_h_glcm_entropy ->
    "Nucleus: Hematoxylin GLCM entropy"."""
    part, stain, kind, stat = name.split("_")
    stain = {"h": "Hematoxylin", "e": "Eosin"}[stain]
    return f"{part.capitalize()}: {stain} {kind.upper()} {stat}" + (f" ({unit})" if unit else "")


FEATURE_LABELS = {k: _feature_label(k, u) for k, u in FEATURES.items()}

Outline = list[list[tuple[int, int]]]  # polygons, each a ring of (x, y) pixel-corner points
Nuclei = Mapping[int, Mapping[str, Any]]  # nucleus id -> record
Measurements = Mapping[int, Mapping[str, Any]]  # nucleus id -> {measurement: value, "outline"}
