"""A nucleus record as a row of the nucleus store (`hovernet.io.store`) and back: the values of
its columns, pure Python (the store alone runs SQL). Measurements are in the store's pixels;
`contour` is int32 [x, y] bytes, `type_probs` and `outline` JSON text, a NaN colour feature
NULL (SQLite has no NaN) and NaN again when read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hovernet.nuclei import FEATURES, MEASUREMENTS

# the nuclei table's columns but its id, in the order of `record_row`
COLUMNS = (
    ("region", "type", "type_prob", "x", "y", "cx", "cy", "rmin", "cmin", "rmax", "cmax")
    + tuple(MEASUREMENTS)
    + ("type_probs", "contour", "outline")
    + tuple(FEATURES)
)


def record_row(region: int, rec: Mapping[str, Any]) -> tuple:
    """The values of COLUMNS of record `rec` (tile mode's, with "xy" and "measurements") in
    region `region`."""
    (rmin, cmin), (rmax, cmax) = rec["bbox"]
    shapes = rec["measurements"]
    probs = rec.get("type_probs")
    t, p = rec.get("type"), rec.get("type_prob")
    return (
        region,
        None if t is None else int(t),
        None if p is None else float(p),
        float(rec["xy"][0]),
        float(rec["xy"][1]),
        float(rec["centroid"][0]),
        float(rec["centroid"][1]),
        int(rmin),
        int(cmin),
        int(rmax),
        int(cmax),
        *(float(shapes[k]) for k in MEASUREMENTS),
        None if probs is None else json.dumps([float(v) for v in probs]),
        np.asarray(rec["contour"], dtype=np.int32).tobytes(),
        # the outer boundary of the nucleus pixels in corner coordinates (GeoJSON polygons)
        json.dumps(shapes["outline"]) if shapes.get("outline") else None,
        # colour features when measured (NaN is stored as NULL, as SQLite has no NaN)
        *(_real(shapes.get(k)) for k in FEATURES),
    )


def _real(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def row_record(row: tuple) -> dict[str, Any]:
    """The record (`NucleusStore.nuclei`'s, with "store_id" and "region") of a row of the store
    id and COLUMNS (the colour features may be NULL)."""
    nid, region, t, p, x, y, cx, cy, rmin, cmin, rmax, cmax, *rest = row
    n = len(MEASUREMENTS)
    shapes, probs, contour, outline = rest[:n], rest[n], rest[n + 1], rest[n + 2]
    colour = rest[n + 3 :]
    rec: dict[str, Any] = {
        "store_id": nid,
        "region": region,
        "bbox": [[rmin, cmin], [rmax, cmax]],
        "centroid": [cx, cy],
        "contour": np.frombuffer(contour, dtype=np.int32).reshape(-1, 2),
        "type": t,
        "type_prob": p,
        "xy": [x, y],
        "measurements": dict(zip(MEASUREMENTS, shapes, strict=True)),
    }
    if outline is not None:
        rec["measurements"]["outline"] = json.loads(outline)
    if any(v is not None for v in colour):  # measured: NULL is NaN
        rec["measurements"].update(
            (k, math.nan if v is None else v) for k, v in zip(FEATURES, colour, strict=True)
        )
    if probs is not None:
        rec["type_probs"] = json.loads(probs)
    return rec
