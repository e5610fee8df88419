"""Slide mode's density maps as files: `<slide>.density.tif` (the arrays) and `<slide>.density.png`.

The TIFF is the primary format: one page, float32, one sample (band) per plane
(`planarconfig=separate`), so `tifffile.imread(path)` gives (bands, rows, cols). Its
ImageDescription is the geometry as JSON (`hovernet.metrics.density.density_maps`, with the band
names as classes): `bands` (class names, "total", "tissue_mm2"), `band_types`, `grid_um`, `cell_px`
(level-0 pixels), `origin_px` / `origin_um` ([0, 0]: the slide's top-left corner), `shape`,
`slide_mpp`, `dimensions`, `mask_mpp`, `min_tissue_fraction`, `units`, and the slide's name.
Cell (r, c) covers level-0 x in [c, c + 1) * cell_px, y in [r, r + 1) * cell_px. Its resolution
tags say the same in centimetres. The PNG shows each class band and the total as a colour-mapped
panel (viridis, 0 to the panel's 99th percentile, on a colour bar), grey where NaN, with a
scale bar. Both are written under temporary names and renamed when complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from array import array
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.atomic import atomic_path
from hovernet.io.type_info import TypeInfo
from hovernet.io.writers import class_of, prob_names
from hovernet.metrics.density import TISSUE, TOTAL, DensityGrid, density_maps

PathLike = str | os.PathLike
FORMAT = "hovernet density map"
NAN_GREY = (225, 225, 225)  # BGR of cells with too little tissue
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX

Sink = Callable[[int, dict[str, Any]], None]


def write_density_tiff(path: PathLike, bands: np.ndarray, geometry: Mapping[str, Any]) -> None:
    """The bands (float32, (bands, rows, cols)) with the geometry as JSON in the description."""
    import tifffile

    bands = np.ascontiguousarray(bands, np.float32)
    per_cm = 1e4 / float(geometry["grid_um"])  # cells per centimetre
    doc = {"format": FORMAT, "version": 1, **geometry}
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            bands,
            photometric="minisblack",
            planarconfig="separate",
            description=json.dumps(doc),
            metadata=None,
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
            compression="zlib",
        )


def read_density_tiff(path: PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """(bands (bands, rows, cols) float32, geometry) of a `<slide>.density.tif`."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            doc = json.loads(page.description)
            bands = page.asarray()
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise HoverNetError(
            f"{path}: not a readable density map ({exc}); rerun `hovernet infer wsi` with "
            "--overwrite to write it again"
        ) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise HoverNetError(f"{path}: not a hovernet density map (its description says otherwise)")
    return bands.reshape(len(doc["bands"]), *doc["grid_shape"]), doc


# ----------------------------------------------------------------------------------------------
# the PNG


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at least `value` (> 0)."""
    exp = 10 ** math.floor(math.log10(value))
    return next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= value * (1 - 1e-9))


def _viridis(values: np.ndarray, top: float) -> np.ndarray:
    import cv2

    scaled = np.clip(np.nan_to_num(values, nan=0.0) / top, 0, 1) * 255
    out = cv2.applyColorMap(scaled.round().astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    out[np.isnan(values)] = NAN_GREY
    return out


def _text(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.42) -> None:
    import cv2

    cv2.putText(canvas, text, (x, y), FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _panel(values: np.ndarray, name: str, colour: tuple, k: float, grid_um: float) -> np.ndarray:
    """One band as a titled, colour-mapped map (each cell k px wide) with its colour bar and a
    scale bar."""
    import cv2

    rows, cols = values.shape
    finite = values[np.isfinite(values) & (values > 0)]
    top = _nice(float(np.percentile(finite, 99))) if finite.size else 1.0
    w, h = max(160, round(cols * k)), round(rows * k)
    shown = cv2.resize(_viridis(values, top), (round(cols * k), h), interpolation=cv2.INTER_NEAREST)
    panel = np.full((h + 74, w + 16, 3), 255, np.uint8)
    cv2.rectangle(panel, (8, 6), (20, 18), tuple(int(c) for c in colour[::-1]), -1)
    _text(panel, name, 26, 17)
    panel[24 : 24 + h, 8 : 8 + shown.shape[1]] = shown
    bar = _viridis(np.linspace(0, top, 150)[None].repeat(8, 0), top)
    panel[h + 30 : h + 38, 8:158] = bar
    _text(panel, "0", 8, h + 52, 0.38)
    _text(panel, f"{top:g} /mm2", 158 - 8 * len(f"{top:g} /mm2"), h + 52, 0.38)
    um = _nice(max(grid_um, 0.25 * cols * grid_um))  # about a quarter of the map
    length = round(um / grid_um * k)
    if length <= w:
        cv2.line(panel, (8, h + 64), (8 + length, h + 64), (0, 0, 0), 2)
        _text(panel, f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} um", 12 + length, h + 69, 0.38)
    return panel


def density_image(
    bands: np.ndarray, geometry: Mapping[str, Any], colours: list[tuple], title: str
) -> np.ndarray:
    """BGR small multiples: a panel per band but tissue_mm2 (`colours`: one RGB per panel)."""
    import cv2

    names = list(geometry["bands"])
    shown = [i for i, n in enumerate(names) if n != TISSUE]
    rows, cols = bands.shape[1:]
    long = max(rows, cols)
    k = max(1, 256 // long) if long < 256 else 512 / long if long > 512 else 1.0
    panels = [_panel(bands[i], names[i], colours[i], k, geometry["grid_um"]) for i in shown]
    per_row = math.ceil(math.sqrt(len(panels)))
    ph, pw = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    n_rows = math.ceil(len(panels) / per_row)
    canvas = np.full((30 + n_rows * ph, max(per_row * pw, 420), 3), 255, np.uint8)
    for i, p in enumerate(panels):
        y, x = 30 + (i // per_row) * ph, (i % per_row) * pw
        canvas[y : y + p.shape[0], x : x + p.shape[1]] = p
    pct = round(100 * geometry["min_tissue_fraction"])
    _text(canvas, title, 8, 14)
    head = f"nuclei per mm2 of tissue, {geometry['grid_um']:g} um cells; grey: under {pct} % tissue"
    _text(canvas, head, 8, 27, 0.38)
    cv2.line(canvas, (0, 29), (canvas.shape[1], 29), (200, 200, 200), 1)
    return canvas


def write_density_png(path: PathLike, image: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"OpenCV could not write {path}")


# ----------------------------------------------------------------------------------------------
# slide mode's hook


def band_names(n_types: int, type_info: TypeInfo | None) -> tuple[list[str], list[tuple]]:
    """Names and RGB colours of the class bands, then total and tissue (black)."""
    names = prob_names(n_types, type_info) + [TOTAL, TISSUE]
    colours = [class_of({"type": t}, type_info)[1] for t in range(n_types)]
    return names, colours + [(0, 0, 0), (0, 0, 0)]


def density_sinks(paths: Mapping[str, Path], spec: Any, n_types: int | None) -> list:
    """The export pass' sink for the density maps of ExportSpec `spec` (none when its
    density_grid_um is 0): it collects each record's level-0 centroid and type and, at the end,
    writes `paths["density"]` and `paths["density_png"]`."""
    if not getattr(spec, "density_grid_um", 0):
        return []
    return [_density_sink(paths, spec, n_types or 0)]


@contextlib.contextmanager
def _density_sink(paths: Mapping[str, Path], spec: Any, n_types: int) -> Iterator[Sink]:
    xs, ys, ts = array("d"), array("d"), array("q")

    def add(nid: int, rec: dict[str, Any]) -> None:
        x, y = rec["xy"]
        xs.append(x)
        ys.append(y)
        ts.append(-1 if rec["type"] is None else int(rec["type"]))

    yield add
    xy = np.stack([np.frombuffer(xs), np.frombuffer(ys)], axis=1) if xs else np.zeros((0, 2))
    mask = spec.mask if spec.density_mask is None else spec.density_mask
    types = np.frombuffer(ts, np.int64) if ts else np.zeros(0, np.int64)
    grid = DensityGrid(spec.dimensions, spec.slide_mpp, spec.density_grid_um)
    bands, geometry = density_maps(xy, types, n_types, mask, spec.mask_mpp, grid)
    names, colours = band_names(n_types, spec.type_info)
    name = Path(spec.slide_path).name
    geometry = {"slide": name, **geometry, "bands": names}
    write_density_tiff(paths["density"], bands, geometry)
    write_density_png(paths["density_png"], density_image(bands, geometry, colours, name))
