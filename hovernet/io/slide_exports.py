"""Slide-mode exports, streamed from the nucleus store (`hovernet.io.store`) in bounded memory.

The store's pixels are those of the processing resolution, or twice as fine when slide mode
ran at sub-pixel phases; `meta["scale"]` converts them to level 0.

Nuclei are numbered 1..N in store order (region by region, in the order post-processing found
them), which does not depend on interruptions: a resumed run exports the same files as an
uninterrupted one. `export_slide` reads the store once for its four files (`_export` hands each
record to one writer per file). Every file is written under a temporary name and renamed when
complete.

| file | coordinates |
|---|---|
| `<slide>.geojson.gz` | level-0 pixels (QuPath detections, tile mode's Feature layout) |
| `<slide>.csv` | level-0 pixels; area and OD sums in level-0 px^2, perimeter in level-0 px |
| `<slide>.json` | the original's schema (`mag`, `nuc`) in the store's pixels (see below), `mag` |
| `<slide>.overlay.png` | the thumbnail with nuclei in type colours and a legend |
| `<slide>.density.tif`, `.png` | nuclei/mm^2 per class on a grid (`hovernet.io.density_files`) |
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.grids import Grid
from hovernet.io.atomic import atomic_path, write_text_atomic
from hovernet.io.density_files import density_sinks
from hovernet.io.names import output_stem
from hovernet.io.overlay_files import write_overlay_canvas
from hovernet.io.store import NucleusStore
from hovernet.io.type_info import TypeInfo
from hovernet.io.writers import (
    CoordinateText,
    FeatureClasses,
    class_of,
    csv_header,
    csv_row,
    nucleus_feature,
    nucleus_feature_json,
    prob_names,
)
from hovernet.nuclei import FEATURES

PathLike = str | os.PathLike
EXPORTS = {
    "geojson": ".geojson.gz",
    "json": ".json",
    "csv": ".csv",
    "overlay": ".overlay.png",
    "summary": ".summary.json",
}
STORE_SUFFIX = ".db"
OD_SUMS = [k for k in FEATURES if k.endswith("_od_sum")]  # scaled as areas


def output_paths(output_dir: Path, name: str) -> dict[str, Path]:
    """Every file slide mode writes for slide `name` (`hovernet.io.names.output_stem` of its
    file): the EXPORTS, the store and the optional mask, thumbnail and label maps."""
    paths = {k: output_dir / f"{name}{suffix}" for k, suffix in EXPORTS.items()}
    paths["store"] = output_dir / f"{name}{STORE_SUFFIX}"
    paths["mask"] = output_dir / f"{name}.mask.png"
    paths["thumb"] = output_dir / f"{name}.thumb.png"
    paths["instances"] = output_dir / f"{name}.instances.tif"
    paths["types"] = output_dir / f"{name}.types.tif"
    paths["density"] = output_dir / f"{name}.density.tif"  # hovernet.io.density_files
    paths["density_png"] = output_dir / f"{name}.density.png"
    return paths


def remove_outputs(paths: Mapping[str, Path]) -> None:
    """Delete a slide's store (with its SQLite side files) and every export (--overwrite)."""
    for key in ("store", *EXPORTS, "mask", "thumb", "instances", "types", "density", "density_png"):
        paths[key].unlink(missing_ok=True)
    for extra in ("-wal", "-shm"):
        Path(f"{paths['store']}{extra}").unlink(missing_ok=True)


@dataclass(frozen=True)
class ExportSpec:
    """What the exports of one slide need besides its store and its file names."""

    slide_path: str
    dimensions: tuple[int, int]  # level 0, (width, height)
    slide_mpp: float
    frame_mpp: float  # resolution of the store's coordinates
    frame_size: tuple[int, int]  # (width, height) of the slide at frame_mpp
    mag: float  # the magnification written into the JSON
    thumb: np.ndarray
    thumb_mpp: float
    mask: np.ndarray  # tissue mask (for --save_mask)
    type_info: TypeInfo | None = None
    save_mask: bool = False
    save_thumb: bool = False
    save_label_map: bool = False
    mask_mpp: float = 0.0  # um per pixel of `mask`
    density_grid_um: float = 0.0  # density maps' cell side (hovernet.io.density_files); 0: none
    density_mask: np.ndarray | None = None  # the tissue whose nuclei were sought; None: mask


def export_slide(
    store: NucleusStore,
    paths: Mapping[str, Path],
    spec: ExportSpec,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write a slide's exports from its store; returns the summary's slide and nuclei fields
    (the caller adds its run figures and writes the summary last)."""
    name = output_stem(spec.slide_path)
    info = spec.type_info
    # one pass over the store for the four files, not one per file (a pass reads and parses
    # every record: 0.1 s for 9,773 nuclei)
    _export(
        store,
        _geojson_sink(paths["geojson"], store, info, name),
        _csv_sink(paths["csv"], store, info, spec.frame_mpp),
        _json_sink(paths["json"], spec.mag),
        _overlay_sink(paths["overlay"], spec.thumb, spec.thumb_mpp / spec.frame_mpp, info),
        *density_sinks(paths, spec, store.meta.get("nr_types")),
    )
    if spec.save_mask:
        write_png(paths["mask"], spec.mask)
    if spec.save_thumb:
        write_png(paths["thumb"], spec.thumb)
    if spec.save_label_map:
        write_label_maps(store, paths, spec.frame_size, spec.frame_mpp)
    per_class: dict[str, int] = {}
    for t, n in sorted(store.counts_by_type().items(), key=lambda kv: (kv[0] is None, kv[0])):
        per_class[class_of({"type": t}, info)[0]] = n
    n_cut = store.n_cut()
    if n_cut:
        log(f"warning: {name}: {n_cut} nuclei touch a region border; use a larger margin")
    return {
        "slide": spec.slide_path,
        "dimensions": list(spec.dimensions),
        "slide_mpp": float(spec.slide_mpp),
        "proc_mpp": float(store.meta["proc_mpp"]),
        "phases": int(store.meta.get("phases", 1)),
        "outline_mpp": spec.frame_mpp,  # resolution of the JSON coordinates and label maps
        "mag": spec.mag,
        "nuclei": store.count(),
        "nuclei_per_class": per_class,
        # class names and colours as type_info.json has them (for `hovernet view`); null: untyped
        "type_info": {str(k): [n, list(c)] for k, (n, c) in info.items()} if info else None,
        "nuclei_cut_by_region_border": n_cut,
        "outputs": sorted(p.name for k, p in paths.items() if k != "summary" and p.exists()),
    }


def write_label_maps(
    store: NucleusStore, paths: Mapping[str, Path], size: tuple[int, int], mpp: float
) -> None:
    """Instance ids (export numbering) and types as tiled pyramidal TIFFs at `mpp` (the store's
    coordinates: the processing resolution, or twice as fine with phases)."""
    import cv2

    from hovernet.io.pyramid import write_label_pyramid

    width, height = size
    ids = {rec["store_id"]: n for n, rec in enumerate(store.nuclei(), start=1)}

    def tile_fn(kind: str):
        def read_tile(x: int, y: int, w: int, h: int) -> np.ndarray:
            out = np.zeros((h, w), np.int32)
            for rec in store.nuclei((x, y, x + w, y + h)):
                value = ids[rec["store_id"]] if kind == "instances" else (rec["type"] or 0)
                pts = (rec["contour"] - np.array([x, y], np.int32)).reshape(-1, 1, 2)
                cv2.fillPoly(out, [pts], int(value))
            return out.astype(np.uint32 if kind == "instances" else np.uint8)

        return read_tile

    for kind in ("instances", "types"):
        dtype = np.uint32 if kind == "instances" else np.uint8
        write_label_pyramid(paths[kind], (height, width), tile_fn(kind), mpp, dtype=dtype)


def _numbered(store: NucleusStore) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from enumerate(store.nuclei(), start=1)


Sink = Callable[[int, dict[str, Any]], None]


def _export(store: NucleusStore, *sinks: contextlib.AbstractContextManager[Sink]) -> None:
    """Feed every numbered record of the store to each sink, reading the store once; a sink is
    a context manager that opens its file, gives the function that adds a record, and
    completes the file when the loop ends (or removes it on error)."""
    with contextlib.ExitStack() as stack:
        adds = [stack.enter_context(sink) for sink in sinks]
        for nid, rec in _numbered(store):
            for add in adds:
                add(nid, rec)


def level0_shapes(rec: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """The record's measurements in level-0 pixels (OD sums, like the area, in level-0 px^2:
    sum = mean x area)."""
    shapes = dict(rec["measurements"])
    shapes["area"] *= scale * scale
    shapes["perimeter"] *= scale
    for key in OD_SUMS:
        if key in shapes:
            shapes[key] *= scale * scale
    return shapes


def has_features(store: NucleusStore) -> bool:
    """Whether the slide's run measured colour features (the store's run identity says)."""
    return bool((store.meta.get("run") or {}).get("features"))


def _level0(rec: Mapping[str, Any], outline: Grid) -> tuple[dict[str, Any], dict[str, float]]:
    """The record (in the `outline` grid, the store's) with centroid and bbox in level-0
    pixels, and its level-0 measurements."""
    (rmin, cmin), (rmax, cmax) = rec["bbox"]
    x0, y0, x1, y1 = outline.box_to_level0((cmin, rmin, cmax, rmax))
    out = dict(rec)
    out["centroid"] = rec["xy"]
    out["bbox"] = [[y0, x0], [y1, x1]]
    return out, level0_shapes(rec, outline.level0)


def _class_names(store: NucleusStore, type_info: TypeInfo | None) -> list[str]:
    return _meta_class_names(store.meta, type_info)


def _meta_class_names(meta: Mapping[str, Any], type_info: TypeInfo | None) -> list[str]:
    nr_types = meta.get("nr_types")
    return prob_names(nr_types or 0, type_info) if nr_types else []


class Level0Features:
    """The GeoJSON Features of a slide's store records (`NucleusStore.nuclei`, `StoreReader.
    records`) as `<slide>.geojson.gz` holds them: level-0 pixels, numbered `nid` in export
    order, UUIDs from `<stem>/<nid>`. The export writes their text (`text`), the viewer's
    download their dicts (`feature`); both are the same Feature. `meta`: the store's."""

    def __init__(self, meta: Mapping[str, Any], type_info: TypeInfo | None, stem: str):
        self.stem, self.type_info = stem, type_info
        self.scale = float(meta["scale"])
        self.names = _meta_class_names(meta, type_info)
        self.classes = FeatureClasses(type_info, self.names)
        self._coords = CoordinateText(self.scale)  # shared by the nuclei of a file

    def feature(self, nid: int, rec: Mapping[str, Any]) -> dict[str, Any]:
        shapes = {nid: level0_shapes(rec, self.scale)}
        key = f"{self.stem}/{nid}"
        return nucleus_feature(key, nid, rec, self.classes, shapes, self.scale)

    def text(self, nid: int, rec: Mapping[str, Any]) -> str:
        """`json.dumps(self.feature(nid, rec))`, written quicker."""
        shapes = {nid: level0_shapes(rec, self.scale)}
        key = f"{self.stem}/{nid}"
        return nucleus_feature_json(key, nid, rec, self.classes, shapes, self._coords)


@contextlib.contextmanager
def _geojson_sink(
    path: PathLike, store: NucleusStore, type_info: TypeInfo | None, stem: str
) -> Iterator[Sink]:
    """Gzipped QuPath GeoJSON FeatureCollection in level-0 pixels (see `write_geojson`)."""
    features = Level0Features(store.meta, type_info, stem)
    # no file name or time stamp in the gzip header: equal contents give equal bytes
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="utf-8") as fh,
    ):
        fh.write('{"type": "FeatureCollection", "features": [')

        def add(nid: int, rec: dict[str, Any]) -> None:
            fh.write(("\n" if nid == 1 else ",\n") + features.text(nid, rec))

        yield add
        fh.write("\n]}\n")


@contextlib.contextmanager
def _csv_sink(
    path: PathLike, store: NucleusStore, type_info: TypeInfo | None, outline_mpp: float
) -> Iterator[Sink]:
    """One row per nucleus, tile mode's columns, in level-0 pixels (the store's pixels are at
    `outline_mpp`)."""
    outline = Grid(outline_mpp, float(store.meta["scale"]))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        features = has_features(store)
        writer.writerow(csv_header(_class_names(store, type_info), features))

        def add(nid: int, rec: dict[str, Any]) -> None:
            rec0, shapes = _level0(rec, outline)
            writer.writerow(csv_row(nid, rec0, type_info, shapes, features))

        yield add


@contextlib.contextmanager
def _json_sink(path: PathLike, mag: float | None) -> Iterator[Sink]:
    """The original's JSON (`{"mag", "nuc": {id: {bbox, centroid, contour, type_prob, type}}}`)
    in the store's whole-slide pixels (the processing resolution, or twice as fine with
    sub-pixel phases), which `mag` names. The bboxes are [[rmin, cmin], [rmax, cmax]] of the
    whole slide (rows first, as tile mode and the original's tile mode write them)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write('{"mag": ' + json.dumps(mag) + ', "nuc": {')

        def add(nid: int, rec: dict[str, Any]) -> None:
            doc = {
                "bbox": rec["bbox"],
                "centroid": rec["centroid"],
                "contour": rec["contour"].tolist(),
                "type_prob": rec["type_prob"],
                "type": rec["type"],
            }
            if "type_probs" in rec:
                doc["type_probs"] = rec["type_probs"]
            fh.write(("" if nid == 1 else ", ") + f'"{nid}": ' + json.dumps(doc))

        yield add
        fh.write("}}\n")


@contextlib.contextmanager
def _overlay_sink(
    path: PathLike, thumb: np.ndarray, per_thumb_px: float, type_info: TypeInfo | None
) -> Iterator[Sink]:
    """The thumbnail with each nucleus outlined (or dotted, when small) in its class colour,
    and a legend of class names with counts. `per_thumb_px`: outline pixels (the store's) per
    thumbnail pixel."""
    import cv2

    canvas = cv2.cvtColor(np.ascontiguousarray(thumb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    counts: Counter = Counter()

    def add(nid: int, rec: dict[str, Any]) -> None:
        name, colour = class_of(rec, type_info)
        counts[(name, colour)] += 1
        bgr = colour[::-1]  # class_of gives ints
        pts = (rec["contour"] / per_thumb_px).round().astype(np.int32)
        # extent (max - min) of 3 px or more; boundingRect's sides are extent + 1 (5 times
        # quicker than numpy's max and min of so few points)
        if max(cv2.boundingRect(pts)[2:]) >= 4:
            cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], True, bgr, 1)
        else:
            x, y = (int(round(v / per_thumb_px)) for v in rec["centroid"])
            cv2.circle(canvas, (x, y), 1, bgr, -1)

    yield add
    write_overlay_canvas(path, canvas, counts, type_info)


def write_png(path: PathLike, rgb_or_mask: np.ndarray) -> None:
    import cv2

    arr = np.asarray(rgb_or_mask)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.ndim == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), arr):
            raise OSError(f"OpenCV could not write {path}")


def write_summary(path: PathLike, summary: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(summary, indent=2, sort_keys=False) + "\n")
