"""Annotation readers: every format becomes one internal form, an instance map plus an optional
type per instance, readable band by band so that slide-sized annotations fit in memory.

Formats (`FORMATS`):
- `colour`: an RGB mask painted with the class colours of a `type_info.json` (colour_masks.py);
- `inst`: an instance map file (.npy/.png/.tif), with an optional `<name>_type.<ext>` type map;
- `mat`: CoNSeP `.mat` (`inst_map`, `type_map`), class merging by a table (`CLASS_MERGES`);
- `xml`: MoNuSeg/Kumar Aperio ImageScope polygons;
- `geojson`: QuPath annotation/detection export, classification names -> type_info names;
- `masks`: a folder of per-nucleus binary masks (Kaggle DSB 2018 layout);
- `patch`: the original project's extracted patches (`.npy`, H x W x 5: RGB, instance, type);
- `points`: a CSV of nucleus centres with classes, no outlines (points.py; type targets only).

A labels object has `path`, `height`, `width`, `n_instances`, `inst_type` (uint8 class id per
instance id, index 0 = background, or None when untyped), `read_rows(y0, y1)` (uint32 ids
1..n_instances, 0 = background) and `close()`. `load_annotated` returns whole arrays for images
that fit in memory.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.colour_masks import ColourMaskLabels
from hovernet.io.label_options import LabelOptions
from hovernet.io.labels import read_label_array
from hovernet.io.points import open_points
from hovernet.io.slides import IMAGE_SUFFIXES, read_mask_image
from hovernet.io.type_info import TypeInfo

__all__ = [
    "CLASS_MERGES",
    "FORMATS",
    "ArrayLabels",
    "LabelOptions",
    "PolygonLabels",
    "detect_format",
    "merge_table",
    "open_labels",
    "read_consep_mat",
    "read_imagescope_xml",
    "read_label_maps",
    "read_mask_folder",
    "read_original_patch",
    "read_qupath_geojson",
]

FORMATS = ("colour", "inst", "mat", "xml", "geojson", "masks", "patch", "points")
LABEL_SUFFIXES = {".npy", ".png", ".tif", ".tiff"}

# Class merging tables: source type id -> training type id. "consep" is the original
# HoVer-Net's 7 -> 4 merge of CoNSeP: 1 other, 2 inflammatory, 3+4 epithelial (healthy and
# dysplastic/malignant), 5+6+7 spindle-shaped (fibroblast, muscle, endothelial).
CLASS_MERGES: dict[str, dict[int, int]] = {
    "consep": {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4},
}
MERGED_TYPE_INFO: dict[str, TypeInfo] = {
    "consep": {
        0: ("background", (0, 0, 0)),
        1: ("other", (255, 0, 0)),
        2: ("inflammatory", (0, 255, 0)),
        3: ("epithelial", (0, 0, 255)),
        4: ("spindle-shaped", (255, 255, 0)),
    },
}


# ------------------------------------------------------------------ type_info and class merging
def merge_table(spec: str | os.PathLike | dict | None) -> dict[int, int] | None:
    """A preset name from CLASS_MERGES, a JSON file {"source id": target id}, or a dict."""
    if spec is None or isinstance(spec, dict):
        return None if spec is None else {int(k): int(v) for k, v in spec.items()}
    if str(spec) in CLASS_MERGES:
        return CLASS_MERGES[str(spec)]
    path = Path(spec)
    try:
        return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        raise HoverNetError(
            f"{spec}: not a merge preset ({', '.join(CLASS_MERGES)}) nor a JSON file"
        ) from None
    except (ValueError, AttributeError) as exc:
        raise HoverNetError(f'{path}: expected {{"source id": target id, ...}} ({exc})') from exc


def apply_merge(types: np.ndarray, table: dict[int, int], path: Path) -> np.ndarray:
    """Map type ids through a merge table; ids missing from the table are an error."""
    present = np.unique(types)
    missing = sorted(set(present.tolist()) - set(table))
    if missing:
        raise HoverNetError(f"{path}: type ids {missing} are not in the class merge table")
    lut = np.zeros(int(present.max()) + 1, np.uint8)
    for k, v in table.items():
        if k < len(lut):
            lut[k] = v
    return lut[types]


# ------------------------------------------------------------------ label sources
class ArrayLabels:
    """Labels from an instance map in memory or memory-mapped (.npy).

    Ids with gaps are renumbered 1..N in increasing order. With a type map, each instance takes
    the most frequent type among its pixels (the type map is per instance in every format here).
    """

    def __init__(self, path: Path, inst: np.ndarray, types: np.ndarray | None = None):
        self.path = Path(path)
        if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
            raise HoverNetError(
                f"{self.path}: an instance map must be a 2-D integer array, got "
                f"{inst.dtype} {inst.shape}"
            )
        if types is not None and types.shape != inst.shape:
            raise HoverNetError(
                f"{self.path}: type map shape {types.shape} differs from instance map {inst.shape}"
            )
        if inst.size and inst.min() < 0:
            raise HoverNetError(f"{self.path}: negative instance ids; use 0 for background")
        self._inst = inst
        self.height, self.width = inst.shape
        ids = np.union1d([0], _unique_by_bands(inst))
        self._ids = ids
        self.n_instances = len(ids) - 1
        self._dense = np.zeros(int(ids[-1]) + 1, np.uint32) if ids[-1] < 2**26 else None
        if self._dense is not None:
            self._dense[ids] = np.arange(len(ids), dtype=np.uint32)
        self.inst_type = None if types is None else self._vote(types)

    def _vote(self, types: np.ndarray) -> np.ndarray:
        n_types = int(types.max()) + 1 if types.size else 1
        votes = np.zeros((self.n_instances + 1) * n_types, np.int64)
        for y0 in range(0, self.height, 2048):
            ids = self.read_rows(y0, min(y0 + 2048, self.height)).astype(np.int64)
            t = np.asarray(types[y0 : y0 + 2048], np.int64)
            votes += np.bincount((ids * n_types + t).ravel(), minlength=votes.size)
        inst_type = votes.reshape(-1, n_types).argmax(axis=1).astype(np.uint8)
        inst_type[0] = 0
        return inst_type

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        band = np.asarray(self._inst[y0:y1])
        if self._dense is not None:
            return self._dense[band]
        return np.searchsorted(self._ids, band).astype(np.uint32)

    def close(self) -> None:
        self._inst = None


def _unique_by_bands(arr: np.ndarray, rows: int = 2048) -> np.ndarray:
    parts = [np.unique(np.asarray(arr[y : y + rows])) for y in range(0, arr.shape[0], rows)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, arr.dtype)


@dataclass
class _Shape:
    rings: list[tuple[np.ndarray, np.ndarray, bool]]  # (rows, cols, is_hole)
    top: float
    bottom: float


class PolygonLabels:
    """Polygon annotations rasterised band by band; later polygons win where they overlap.

    A pixel belongs to a polygon when its centre lies inside (skimage.draw.polygon).
    """

    def __init__(self, path, shapes: list[_Shape], types, height: int, width: int):
        self.path, self._shapes, self.height, self.width = Path(path), shapes, height, width
        self.n_instances = len(shapes)
        self.inst_type = None if types is None else np.concatenate([[0], types]).astype(np.uint8)
        self._top = np.array([s.top for s in shapes])
        self._bottom = np.array([s.bottom for s in shapes])

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        from skimage.draw import polygon

        out = np.zeros((y1 - y0, self.width), np.uint32)
        hit = np.flatnonzero((self._bottom >= y0 - 1) & (self._top <= y1))
        for i in hit:
            for rows, cols, is_hole in self._shapes[i].rings:
                rr, cc = polygon(rows - y0 if y0 else rows, cols, shape=out.shape)
                if is_hole:
                    inside = out[rr, cc] == i + 1
                    out[rr[inside], cc[inside]] = 0
                else:
                    out[rr, cc] = i + 1
        return out

    def close(self) -> None:
        pass


def _shape(rings: list[tuple[np.ndarray, np.ndarray, bool]]) -> _Shape:
    rows = np.concatenate([r for r, _, _ in rings])
    return _Shape(rings, float(rows.min()), float(rows.max()))


# ------------------------------------------------------------------ readers
def _check_size(path: Path, shape: tuple[int, int], expect: tuple[int, int] | None) -> None:
    if expect is not None and tuple(shape) != tuple(expect):
        raise HoverNetError(
            f"{path}: annotation is {shape[1]} x {shape[0]} px but its image is "
            f"{expect[1]} x {expect[0]} px; give the annotation made for that image"
        )


def _read_label_file(path: Path) -> np.ndarray:
    """A 2-D integer map from .npy (memory-mapped), .png or .tif; RGB images are refused."""
    arr = read_label_array(path)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        raise HoverNetError(
            f"{path}: this is an RGB image, not an instance map; for a colour-coded mask use "
            "--format colour with --type-info type_info.json"
        )
    return arr


def read_label_maps(
    inst_path: str | os.PathLike,
    type_path: str | os.PathLike | None = None,
    *,
    merge: str | dict | None = None,
    expect_size: tuple[int, int] | None = None,
) -> ArrayLabels:
    """Instance map (+ type map). Without `type_path`, `<name>_inst.<ext>` finds a
    `<name>_type.<npy|png|tif>` beside it."""
    inst_path = Path(inst_path)
    if type_path is None and inst_path.stem.endswith("_inst"):
        base = inst_path.stem[: -len("_inst")] + "_type"
        found = [inst_path.with_name(base + s) for s in sorted(LABEL_SUFFIXES)]
        type_path = next((p for p in found if p.is_file()), None)
    inst = _read_label_file(inst_path)
    _check_size(inst_path, inst.shape[:2], expect_size)
    types = None
    if type_path is not None:
        types = _read_label_file(Path(type_path))
        table = merge_table(merge)
        if table is not None:
            types = apply_merge(np.asarray(types), table, Path(type_path))
    return ArrayLabels(inst_path, inst, types)


def read_consep_mat(
    path: str | os.PathLike,
    *,
    merge: str | dict | None = "consep",
    expect_size: tuple[int, int] | None = None,
) -> ArrayLabels:
    """CoNSeP `.mat` with `inst_map` and (optionally) `type_map`; `merge` None keeps 7 types."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise HoverNetError(f"{path}: no such file") from None
    except Exception as exc:
        raise HoverNetError(f"{path}: cannot read the .mat file ({exc})") from exc
    if "inst_map" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise HoverNetError(f"{path}: no 'inst_map' in the .mat file (it has: {keys})")
    inst = np.asarray(mat["inst_map"]).astype(np.int64)
    _check_size(path, inst.shape, expect_size)
    types = mat.get("type_map")
    if types is not None:
        types = np.asarray(types).astype(np.int64)
        table = merge_table(merge)
        types = apply_merge(types, table, path) if table else types.astype(np.uint8)
    return ArrayLabels(path, inst, types)


def read_imagescope_xml(path: str | os.PathLike, shape: tuple[int, int]) -> PolygonLabels:
    """Aperio ImageScope XML (MoNuSeg/Kumar): every <Region> with >= 3 vertices is a nucleus,
    in document order; vertex X is the column and Y the row, used as given."""
    import xml.etree.ElementTree as ET

    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise HoverNetError(f"{path}: no such file") from None
    except ET.ParseError as exc:
        raise HoverNetError(f"{path}: not a valid XML file ({exc})") from exc
    shapes = []
    for region in root.iter("Region"):
        pts = [(float(v.get("Y")), float(v.get("X"))) for v in region.iter("Vertex")]
        if len(pts) >= 3:
            arr = np.array(pts)
            shapes.append(_shape([(arr[:, 0], arr[:, 1], False)]))
    return PolygonLabels(path, shapes, None, *shape)


def read_qupath_geojson(
    path: str | os.PathLike, shape: tuple[int, int], type_info: TypeInfo | None = None
) -> PolygonLabels:
    """QuPath GeoJSON export (FeatureCollection or list of features) of Polygon/MultiPolygon
    objects, gzipped when the name ends in .gz (slide mode's). Coordinates are pixel corners
    (QuPath), shifted by half a pixel to pixel centres. With `type_info`,
    `properties.classification.name` must match a class name (any case)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HoverNetError(f"{path}: no such file") from None
    except (ValueError, OSError, EOFError) as exc:
        raise HoverNetError(f"{path}: not a JSON file ({exc})") from exc
    features = data.get("features", []) if isinstance(data, dict) else data
    names = {n.lower(): k for k, (n, _) in (type_info or {}).items() if k > 0}
    shapes, types, unknown = [], [], {}
    for feature in features:
        geom = (feature or {}).get("geometry") or {}
        if geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        rings = []
        for poly in polys:
            for j, ring in enumerate(poly):
                arr = np.asarray(ring, float).reshape(-1, 2) - 0.5
                if len(arr) >= 3:
                    rings.append((arr[:, 1], arr[:, 0], j > 0))
        if not rings:
            continue
        if type_info is not None:
            props = feature.get("properties") or {}
            name = str((props.get("classification") or {}).get("name", "(unclassified)"))
            if name.lower() not in names:
                unknown[name] = unknown.get(name, 0) + 1
                continue
            types.append(names[name.lower()])
        shapes.append(_shape(rings))
    if unknown:
        listed = ", ".join(f"{n!r}: {c} objects" for n, c in sorted(unknown.items()))
        known = ", ".join(repr(n) for n, _ in list(type_info.values())[1:])
        raise HoverNetError(
            f"{path}: classification names not in type_info: {listed}; known names: {known}. "
            "Rename the classes in QuPath or add them to type_info.json"
        )
    return PolygonLabels(path, shapes, types if type_info is not None else None, *shape)


def read_mask_folder(
    folder: str | os.PathLike, *, expect_size: tuple[int, int] | None = None
) -> ArrayLabels:
    """A folder of per-nucleus binary masks (DSB 2018): mask k in sorted name order -> id k."""
    folder = Path(folder)
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise HoverNetError(f"{folder}: no mask images in this folder")
    inst = None
    for k, f in enumerate(files, start=1):
        jpeg = f.suffix.lower() == ".jpg"
        mask = np.atleast_3d(read_mask_image(f))[:, :, 0] if jpeg else _read_label_file(f)
        if inst is None:
            _check_size(f, mask.shape[:2], expect_size)
            inst = np.zeros(mask.shape[:2], np.uint32 if len(files) > 65535 else np.uint16)
        elif mask.shape[:2] != inst.shape:
            raise HoverNetError(f"{f}: mask size {mask.shape[:2]} differs from {inst.shape}")
        inst[mask > 0] = k
    return ArrayLabels(folder, inst)


def read_original_patch(path: str | os.PathLike) -> tuple[np.ndarray, ArrayLabels]:
    """The original project's patch `.npy` (H x W x 4 or 5: RGB, instance[, type])."""
    path = Path(path)
    try:
        arr = np.load(path)
    except FileNotFoundError:
        raise HoverNetError(f"{path}: no such file") from None
    except Exception as exc:
        raise HoverNetError(f"{path}: cannot read the .npy file ({exc})") from exc
    if arr.ndim != 3 or arr.shape[2] not in (4, 5):
        raise HoverNetError(
            f"{path}: expected an original HoVer-Net patch H x W x 5 (RGB, instance, type) "
            f"or H x W x 4, got shape {arr.shape}"
        )
    image = np.clip(arr[:, :, :3], 0, 255).astype(np.uint8)
    types = arr[:, :, 4].astype(np.int64) if arr.shape[2] == 5 else None
    return image, ArrayLabels(path, arr[:, :, 3].astype(np.int64), types)


# ------------------------------------------------------------------ dispatch
def detect_format(path: str | os.PathLike, typed_colours: bool = False) -> str:
    """Annotation format from the path: folder -> masks, .mat, .xml, .geojson/.json, .npy ->
    inst, an image -> colour when a type_info is given, else inst."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        return "masks"
    by_suffix = {".mat": "mat", ".xml": "xml", ".geojson": "geojson", ".json": "geojson"}
    by_suffix[".csv"] = "points"
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix == ".npy":
        return "inst"
    if suffix in IMAGE_SUFFIXES:
        return "colour" if typed_colours else "inst"
    raise HoverNetError(
        f"{path}: cannot tell the annotation format from {suffix!r}; pass --format one of "
        + ", ".join(FORMATS)
    )


def open_labels(
    path: str | os.PathLike,
    fmt: str,
    *,
    shape: tuple[int, int],
    options: LabelOptions = LabelOptions(),
):
    """Open any annotation format for band reading; `shape` (H, W) is the image size,
    `options` the format's settings (type_info, class merging, colour-mask rules, points)."""
    type_info, merge = options.type_info, options.merge
    if fmt == "points":
        return open_points(path, shape, type_info, **(options.points or {}))
    if fmt == "colour":
        return ColourMaskLabels(Path(path), options, expect_size=shape)
    if fmt == "inst":
        return read_label_maps(path, merge=merge, expect_size=shape)
    if fmt == "mat":
        return read_consep_mat(path, merge=merge, expect_size=shape)
    if fmt == "xml":
        return read_imagescope_xml(path, shape)
    if fmt == "geojson":
        return read_qupath_geojson(path, shape, type_info)
    if fmt == "masks":
        return read_mask_folder(path, expect_size=shape)
    raise HoverNetError(f"unknown annotation format {fmt!r}: use one of {', '.join(FORMATS)}")
