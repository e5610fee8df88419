"""Output writers for segmented nuclei: JSON, MAT, QuPath GeoJSON and CSV (the overlay PNG:
`hovernet.io.overlay_files`).

Every writer takes the records of `hovernet.infer.postprocess.postprocess` (`{id: {"bbox",
"centroid", "contour", "type", "type_prob"[, "type_probs"]}}`) and writes one file atomically
(temporary name, then rename). They only format: measurements are passed in (computed by
`hovernet.infer.measure.nucleus_measurements`). See docs/outputs.md for the formats.

`type_info` is `{type id: (name, (r, g, b))}` or None for an untyped model, whose nuclei all get
`UNTYPED_CLASS`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from operator import mul
from typing import Any

import numpy as np

from hovernet.io.atomic import atomic_path, write_text_atomic
from hovernet.io.type_info import TypeInfo
from hovernet.nuclei import FEATURE_LABELS, FEATURES, MEASUREMENTS, Measurements, Nuclei

PathLike = str | os.PathLike

UNTYPED_CLASS = ("Nucleus", (255, 255, 0))
UNKNOWN_COLOUR = (128, 128, 128)
# type 0 is the type branch's "no type" class: a nucleus voted 0 is a nucleus without a class,
# whatever the type info calls id 0 (the original's "nolabe", or "background")
UNCLASSIFIED = "unclassified"
# deterministic GeoJSON feature UUIDs: uuid5(namespace, "<file stem>/<nucleus id>")
_UUID_NAMESPACE = uuid.UUID("6f1c2a52-3d0e-4c8e-9a57-7d1a4c0b9e21")


def class_of(nucleus: Mapping[str, Any], type_info: TypeInfo | None) -> tuple[str, tuple]:
    """(name, (r, g, b)) of a nucleus: its type in `type_info`, or the untyped default."""
    t = nucleus.get("type")
    if type_info is None or t is None:
        return UNTYPED_CLASS
    t = int(t)
    name, colour = type_info[t] if t in type_info else (f"type {t}", UNKNOWN_COLOUR)
    if t == 0:  # drawn grey where the type info gives black (invisible on dark nuclei)
        name, colour = UNCLASSIFIED, (UNKNOWN_COLOUR if tuple(colour) == (0, 0, 0) else colour)
    return str(name), tuple(map(int, colour))


def _plain(value: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/lists for json."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path: PathLike, nuclei: Nuclei, mag: float | None = None) -> None:
    """The original's JSON: `{"mag": mag, "nuc": {"<id>": {bbox, centroid, contour, type_prob,
    type[, type_probs]}}}`."""
    keys = ("bbox", "centroid", "contour", "type_prob", "type", "type_probs")
    doc = {
        "mag": mag,
        "nuc": {str(int(i)): {k: rec[k] for k in keys if k in rec} for i, rec in nuclei.items()},
    }
    write_text_atomic(path, json.dumps(doc, default=_plain))


def write_mat(
    path: PathLike,
    inst_map: np.ndarray,
    nuclei: Nuclei,
    raw_map: np.ndarray | None = None,
    typed: bool | None = None,
) -> None:
    """MATLAB file with the original's keys: `inst_map` (H x W int32), `inst_uid` (N x 1 ids),
    `inst_type` (N x 1, only when typed), `inst_centroid` (N x 2 [x, y]), `raw_map` if given.

    `typed` (the model has a type branch) writes `inst_type` even for an image without nuclei
    (0 x 1), so the file has the same keys whatever is found; None: typed when every record
    has a type."""
    import scipy.io

    ids = [int(i) for i in nuclei]
    mat: dict[str, np.ndarray] = {
        "inst_map": np.asarray(inst_map, dtype=np.int32),
        "inst_uid": np.array(ids, dtype=np.int32).reshape(-1, 1),
        "inst_centroid": np.array([nuclei[i]["centroid"] for i in ids], dtype=np.float64).reshape(
            -1, 2
        ),
    }
    types = [nuclei[i].get("type") for i in ids]
    if typed is None:
        typed = bool(types) and all(t is not None for t in types)
    if typed:
        mat["inst_type"] = np.array(types, dtype=np.int32).reshape(-1, 1)
    if raw_map is not None:
        mat["raw_map"] = np.asarray(raw_map)
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, mat, do_compression=True)


def _polygon(contour: list) -> Any:
    """A valid shapely Polygon for an OpenCV contour (pixel centres), exterior counter-clockwise.

    A valid contour is used as it is. An invalid one (self-touching at 1-px necks, or a 1-px wide
    line with no area) is replaced by the outer boundary of its ring buffered by half a pixel
    (mitred): one polygon along the pixels' outer edges.
    """
    from shapely.geometry import LineString, Polygon
    from shapely.geometry.polygon import orient

    poly = Polygon(contour)
    if not poly.is_valid or poly.area == 0:
        outline = LineString([*contour, contour[0]]).buffer(0.5, join_style="mitre")
        poly = Polygon(max(getattr(outline, "geoms", [outline]), key=lambda g: g.area).exterior)
    return orient(poly, sign=1.0)


def _outline_geometry(rings: list) -> Any:
    """A valid shapely (Multi)Polygon from `mask_outline` rings (pixel corners), each exterior
    counter-clockwise. A ring that touches itself at a corner (pixels meeting diagonally) is
    split there into polygons that touch at that point."""
    from shapely import make_valid
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.geometry.polygon import orient

    polys = [Polygon(ring) for ring in rings]
    geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
    if not geom.is_valid:
        fixed = make_valid(geom)
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type == "Polygon"]
        polys = [Polygon(p.exterior) for p in parts if p.area > 0]
        geom = polys[0] if len(polys) == 1 else MultiPolygon(polys)
    if geom.geom_type == "Polygon":
        return orient(geom, sign=1.0)
    return MultiPolygon([orient(p, sign=1.0) for p in geom.geoms])


def _prob_names(nuclei: Nuclei, type_info: TypeInfo | None) -> list[str]:
    """Names of the per-class mean probabilities: one per class of `type_info` (background
    included) for typed outputs, so an image without nuclei has the same columns; otherwise one
    per entry of the records' `type_probs`."""
    first = next(iter(nuclei.values()), None)
    if first is None:
        n = max(type_info) + 1 if type_info else 0
    else:
        n = len(first.get("type_probs") or [])
    return prob_names(n, type_info)


def prob_names(n: int, type_info: TypeInfo | None) -> list[str]:
    """Names of `n` per-class probabilities: the type_info names ("unclassified" for 0), else
    "type <c>"."""
    names = []
    for c in range(n):
        name = type_info[c][0] if type_info and c in type_info else f"type {c}"
        name = UNCLASSIFIED if c == 0 and type_info else name
        names.append(str(name))
    return names


def simple_ring(rings: list) -> tuple[tuple, tuple] | None:
    """(xs, ys) of an outline that is one simple ring, closed and counter-clockwise; else None.

    A `mask_outline` ring follows pixel edges, so it can only touch itself where two of its
    pixels meet diagonally, and there the corner is listed twice. One ring without a repeated
    corner and with a non-zero area is thus a valid polygon, which `_outline_geometry` keeps as
    it is (bar the orientation): its shapely steps are only needed for the other outlines.
    """
    if len(rings) != 1 or len(rings[0]) < 3:
        return None
    xs, ys = zip(*rings[0], strict=True)
    if len(set(zip(xs, ys, strict=True))) < len(xs):
        return None
    twice_area = sum(map(mul, xs, ys[1:] + ys[:1])) - sum(map(mul, xs[1:] + xs[:1], ys))
    if twice_area == 0:
        return None
    xs, ys = xs + xs[:1], ys + ys[:1]
    # shapely's orient reverses the closed ring, which keeps its first point
    return (xs, ys) if twice_area > 0 else (xs[::-1], ys[::-1])


def feature_geometry(outline: list | None, contour: Any, scale: float = 1.0) -> dict[str, Any]:
    """GeoJSON geometry of a nucleus, coordinates times `scale`: its outline (`mask_outline`
    rings, pixel corners), else its contour (pixel centres).

    Exactly shapely's `mapping` of `_outline_geometry(outline)` (or `_polygon(contour)`) scaled
    by `affinity.scale` about (0, 0); one simple ring (nearly every nucleus) is written without
    shapely: 14 us instead of 50 us per nucleus (measured on 9,773 nuclei).
    """
    ring = simple_ring(outline) if outline else None
    if ring is not None:
        points = tuple((float(x) * scale, float(y) * scale) for x, y in zip(*ring, strict=True))
        return {"type": "Polygon", "coordinates": (points,)}
    from shapely import affinity
    from shapely.geometry import mapping

    geom = _outline_geometry(outline) if outline else _polygon(contour)
    if scale != 1.0:
        geom = affinity.scale(geom, scale, scale, origin=(0, 0))
    return mapping(geom)


class CoordinateText(dict):
    """{integer coordinate: `repr(coordinate * scale)`, the text json.dumps writes for it},
    each made once per file rather than once per point (float repr was most of json.dumps's
    time on the nuclei's coordinates)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def __missing__(self, value: int) -> str:
        text = self[value] = repr(float(value) * self.scale)
        return text


_LABELS = {k: k.capitalize() + (f" ({u})" if u else "") for k, u in MEASUREMENTS.items()}


@dataclass(frozen=True)
class FeatureClasses:
    """How the Features of one file name classes: `type_info` (None: an untyped model) and the
    names of the type-probability measurements (`prob_names`)."""

    type_info: TypeInfo | None
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))


def _feature_properties(nid, rec, classes: FeatureClasses, shapes) -> dict[str, Any]:
    """The properties of `nucleus_feature` (same arguments)."""
    name, colour = class_of(rec, classes.type_info)
    values: dict[str, float] = {"Nucleus ID": nid}
    if rec.get("type_prob") is not None:
        values["Type probability"] = float(rec["type_prob"])
    if shapes is not None:
        values.update((label, float(shapes[nid][k])) for k, label in _LABELS.items())
        # colour features when measured; NaN (an empty ring) is left out, as JSON has no NaN
        values.update(
            (label, float(v))
            for k, label in FEATURE_LABELS.items()
            if (v := shapes[nid].get(k)) is not None and v == v
        )
    for cname, p in zip(classes.names, rec.get("type_probs") or [], strict=False):
        values[f"Probability {cname}"] = float(p)
    return {
        "objectType": "detection",
        "classification": {"name": name, "color": list(colour)},
        "measurements": values,
    }


def nucleus_feature(
    key: str,
    nid: int,
    rec: Mapping[str, Any],
    classes: FeatureClasses,
    shapes: Mapping[int, Mapping[str, float]] | None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """One QuPath detection Feature (see `write_geojson`); `key` seeds its deterministic UUID.

    `scale` multiplies the coordinates (after the outline is built from the pixel contour),
    for nuclei found at a lower resolution than the image the GeoJSON refers to.
    """
    # the outer boundary of the nucleus pixels in corner coordinates when measured (exact in
    # QuPath); else the pixel-centre contour of the records
    outline = shapes[nid].get("outline") if shapes is not None else None
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_UUID_NAMESPACE, key)),
        "geometry": feature_geometry(outline, rec["contour"], scale),
        "properties": _feature_properties(nid, rec, classes, shapes),
    }


def nucleus_feature_json(
    key: str,
    nid: int,
    rec: Mapping[str, Any],
    classes: FeatureClasses,
    shapes: Mapping[int, Mapping[str, float]] | None,
    coords: CoordinateText,
) -> str:
    """`json.dumps(nucleus_feature(..., scale=coords.scale))`; a simple ring's points are
    written from `coords` (shared by the nuclei of a file): its geometry's text in 11 us
    instead of 76 us (shapely, then json.dumps; measured on 9,773 nuclei)."""
    outline = shapes[nid].get("outline") if shapes is not None else None
    ring = simple_ring(outline) if outline else None
    if ring is None:
        geometry = json.dumps(feature_geometry(outline, rec["contour"], coords.scale))
    else:
        xs, ys = (map(coords.__getitem__, v) for v in ring)
        points = "], [".join(map(", ".join, zip(xs, ys, strict=True)))
        geometry = '{"type": "Polygon", "coordinates": [[[' + points + "]]]}"
    properties = _feature_properties(nid, rec, classes, shapes)
    head = f'{{"type": "Feature", "id": "{uuid.uuid5(_UUID_NAMESPACE, key)}", "geometry": '
    return f'{head}{geometry}, "properties": {json.dumps(properties, default=_plain)}}}'


def write_geojson(
    path: PathLike,
    nuclei: Nuclei,
    type_info: TypeInfo | None,
    measurements: Measurements | None = None,
) -> None:
    """QuPath (0.4-0.6) GeoJSON FeatureCollection: one detection Feature per nucleus.

    Coordinates are pixel corners of the full image (QuPath's convention: pixel (row r, column
    c) is the square [c, c + 1] x [r, r + 1]), origin top-left, y down. A nucleus is the outer
    boundary of its pixels (`measurements[id]["outline"]`, from `nucleus_measurements`), so a
    reader that fills polygons by pixel centre gets exactly its pixels back; records without an
    outline fall back to their contour (pixel centres). Each exterior ring is
    counter-clockwise in the coordinates as written (positive shoelace area, what shapely's
    `is_ccw` and RFC 7946 validators check); on screen, with y pointing down, it looks clockwise.
    `measurements` (from `nucleus_measurements`) adds area, perimeter, eccentricity and
    solidity, and the colour features it holds (`nucleus_features`; "Nucleus: Hematoxylin OD
    mean", ...); "Nucleus ID" and "Type probability" are always there.
    """
    stem = os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    shapes = measurements
    classes = FeatureClasses(type_info, _prob_names(nuclei, type_info))
    features = [
        nucleus_feature(f"{stem}/{int(nid)}", int(nid), rec, classes, shapes)
        for nid, rec in nuclei.items()
    ]
    doc = {"type": "FeatureCollection", "features": features}
    write_text_atomic(path, json.dumps(doc, default=_plain))


CSV_COLUMNS = [
    "id",
    "type",
    "type_name",
    "type_prob",
    "centroid_x",
    "centroid_y",
    *MEASUREMENTS,
    "bbox_rmin",
    "bbox_cmin",
    "bbox_rmax",
    "bbox_cmax",
]


def csv_header(class_names: list[str], features: bool = False) -> list[str]:
    """CSV_COLUMNS, the `prob_<class>` columns, then with `features` those of FEATURES."""
    return CSV_COLUMNS + [f"prob_{n}" for n in class_names] + (list(FEATURES) if features else [])


def csv_row(
    nid: int,
    rec: Mapping[str, Any],
    type_info: TypeInfo | None,
    shapes: Mapping[str, float],
    features: bool = False,
) -> list:
    """One CSV row (see `write_csv`) of a nucleus record and its measurements; with
    `features`, the FEATURES values of `shapes` last (empty where NaN or not measured)."""
    (rmin, cmin), (rmax, cmax) = rec["bbox"]
    t, p = rec.get("type"), rec.get("type_prob")
    row = [nid, "" if t is None else int(t), class_of(rec, type_info)[0]]
    row += ["" if p is None else repr(float(p))]
    row += [repr(float(c)) for c in rec["centroid"]]
    row += [repr(shapes[k]) for k in MEASUREMENTS]
    row += [int(rmin), int(cmin), int(rmax), int(cmax)]
    row += [repr(float(v)) for v in rec.get("type_probs") or []]
    if features:
        row += [_number(shapes.get(k)) for k in FEATURES]
    return row


def _number(value: float | None) -> str:
    """A CSV cell: repr of the float, empty for NaN or None (read as missing by pandas, R)."""
    return "" if value is None or value != value else repr(float(value))


def write_csv(
    path: PathLike,
    nuclei: Nuclei,
    type_info: TypeInfo | None,
    measurements: Measurements,
    features: bool = False,
) -> None:
    """One row per nucleus: CSV_COLUMNS, then `prob_<class>` columns when records have
    `type_probs`, then with `features` the colour features (FEATURES; `nucleus_features`).
    Type and probability are empty for an untyped model; sizes are in pixels;
    `measurements` (from `nucleus_measurements`) has an entry for every nucleus."""
    shapes = measurements
    names = _prob_names(nuclei, type_info)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header(names, features))
    for nid, rec in nuclei.items():
        writer.writerow(csv_row(int(nid), rec, type_info, shapes[int(nid)], features))
    write_text_atomic(path, buf.getvalue())
