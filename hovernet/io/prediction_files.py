"""The predictions `hovernet stats` reads from an output folder of `hovernet infer`.

- Files of `hovernet.io.labels` (`.mat`, `.npy`, `.tif`, `.png`, `.json`), one per image, as
  tile mode writes them in `out/mat/` and `out/json/`. Tile mode's output folder itself (a
  `mat/` or `json/` folder holding such files) is read through `mat/` (exact instance maps,
  and centroids and types), else `json/`.
- Slide mode's outputs: every `<slide>.geojson.gz` makes `<slide>` one image, scored in the
  slide's level-0 pixels: instance mode fills the GeoJSON's outlines (pixel corners; a pixel
  belongs to a nucleus when its centre lies inside, which gives back the nucleus' pixels
  exactly when the slide was processed at its own resolution), type mode takes the centroids
  and types of `<slide>.csv`. The slide's other files (`.json` in the store's pixels, overlay,
  thumbnail, mask, summary, label maps, store) are not images of their own and are left out.
  `<slide>.summary.json`, when present, gives the level-0 size the truth must have. The
  per-class modes give the slide's nucleus k (its k-th GeoJSON outline) the type of row k of
  `<slide>.csv` (both are written in nucleus order).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.annotations import read_qupath_geojson
from hovernet.io.labels import (
    LABEL_SUFFIXES,
    label_files_in,
    read_centroids,
    read_instance_map,
    read_typed_map,
)
from hovernet.io.slide_exports import EXPORTS, output_paths

GEOJSON = EXPORTS["geojson"]  # ".geojson.gz"
TILE_SUBFOLDERS = ("mat", "json")


@dataclass(frozen=True)
class SlideOutput:
    """One slide of slide mode's output folder."""

    name: str
    path: Path  # <slide>.geojson.gz: level-0 outlines
    csv: Path  # <slide>.csv: level-0 centroids and types
    size: tuple[int, int] | None  # level-0 (height, width) from <slide>.summary.json


def _level0_size(summary: Path) -> tuple[int, int] | None:
    if not summary.is_file():
        return None
    try:
        width, height = json.loads(summary.read_text(encoding="utf-8"))["dimensions"]
        return int(height), int(width)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HoverNetError(
            f"{summary}: cannot read the slide's level-0 dimensions ({exc!r}); rerun "
            "`hovernet infer wsi` on the slide, or delete this summary to skip the size check"
        ) from exc


def slide_outputs(folder: Path) -> tuple[dict[str, SlideOutput], set[Path]]:
    """The slides of a slide-mode output folder, and every file they wrote (to leave out)."""
    slides, written = {}, set()
    for gz in sorted(folder.glob(f"*{GEOJSON}")):
        name = gz.name[: -len(GEOJSON)]
        paths = output_paths(folder, name)
        written.update(paths.values())
        slides[name] = SlideOutput(name, gz, paths["csv"], _level0_size(paths["summary"]))
    return slides, written


def _has_label_files(folder: Path) -> bool:
    return any(p.suffix.lower() in LABEL_SUFFIXES and p.is_file() for p in folder.iterdir())


def prediction_folder(folder: str | Path) -> Path:
    """`folder`, or its `mat/` (else `json/`) when it is tile mode's output folder (one of
    them holds label files; the folder's own files are its run record)."""
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob(f"*{GEOJSON}")):
        return folder
    sub = [folder / s for s in TILE_SUBFOLDERS if (folder / s).is_dir()]
    sub = [s for s in sub if _has_label_files(s)]
    return sub[0] if sub else folder


def list_predictions(folder: str | Path, what: str = "--pred_dir") -> dict:
    """Image name -> LabelFile or SlideOutput for the predictions in `folder` (or in its
    `prediction_folder`)."""
    folder = prediction_folder(folder)
    if not folder.is_dir():
        raise HoverNetError(f"{what} {folder} does not exist or is not a folder; check the path")
    slides, written = slide_outputs(folder)
    files: dict = label_files_in(folder, skip=written)
    files.update(slides)
    if not files:
        raise HoverNetError(
            f"{what} {folder} holds no predictions: give tile mode's output folder (or its "
            f"mat/ or json/), slide mode's output folder (<slide>{GEOJSON} and <slide>.csv), "
            f"or a folder of {', '.join(LABEL_SUFFIXES)} files"
        )
    return files


def read_prediction_map(file, shape: tuple[int, int]) -> np.ndarray:
    """The predicted instance map of one image on a canvas of the truth's `shape`."""
    if not isinstance(file, SlideOutput):
        return read_instance_map(file, shape=shape)
    return _slide_labels(file, shape).read_rows(0, shape[0]).astype(np.int32)


def read_scored_pair(pred_file, true_file, typed: bool = False):
    """(true instance map, true type map or None, predicted instance map on the truth's canvas)
    of one image for scoring; maps of different sizes are refused."""
    true, types = read_typed_map(true_file) if typed else (read_instance_map(true_file), None)
    pred = read_prediction_map(pred_file, true.shape)
    if pred.shape != true.shape:
        raise HoverNetError(
            f"{pred_file.path} is {pred.shape[0]} x {pred.shape[1]} but its truth "
            f"{true_file.path} is {true.shape[0]} x {true.shape[1]}; compare maps of the "
            "same image at the same resolution"
        )
    return true, types, pred


def _slide_labels(file: SlideOutput, shape: tuple[int, int]):
    if file.size is not None and tuple(shape) != file.size:
        h, w = file.size
        raise HoverNetError(
            f"the truth of slide {file.name} is {shape[1]} x {shape[0]} px but {file.path} is in "
            f"the slide's level-0 pixels, {w} x {h}; give the truth at the slide's full "
            "resolution (level 0)"
        )
    path = file.path
    if not path.is_file():
        raise HoverNetError(f"{path}: no such file; rerun `hovernet infer wsi` on the slide")
    return read_qupath_geojson(path, tuple(shape))


def read_prediction_typed(file, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(instance map, per-pixel type map) of one image on a canvas of the truth's `shape`; a
    slide's nucleus k (its k-th GeoJSON outline) takes the type of row k of its CSV."""
    if not isinstance(file, SlideOutput):
        return read_typed_map(file, shape=shape)
    labels = _slide_labels(file, shape)
    _, types = read_prediction_centroids(file)
    if labels.n_instances != len(types):
        raise HoverNetError(
            f"{file.path} has {labels.n_instances} outlines but {file.csv} {len(types)} rows; "
            "both must come from the same run (rerun `hovernet infer wsi` on the slide)"
        )
    inst = labels.read_rows(0, shape[0]).astype(np.int64)
    lut = np.concatenate([[0], types]).astype(np.int64)
    return inst, lut[inst]


def read_prediction_centroids(file) -> tuple[np.ndarray, np.ndarray]:
    """(centroids N x 2 [x, y], types (N,)) of one image; a slide's from its CSV (level 0)."""
    if not isinstance(file, SlideOutput):
        return read_centroids(file)
    try:
        with open(file.csv, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
        xy = [(float(r["centroid_x"]), float(r["centroid_y"])) for r in rows]
        types = [int(r["type"]) if r["type"] else 0 for r in rows]
    except FileNotFoundError:
        raise HoverNetError(
            f"{file.csv}: no such file; type mode reads a slide's centroids and types there "
            "(rerun `hovernet infer wsi` on the slide)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HoverNetError(
            f"{file.csv}: cannot read centroid_x, centroid_y and type ({exc!r}); it must be "
            "the CSV `hovernet infer wsi` writes"
        ) from exc
    return np.array(xy, np.float64).reshape(-1, 2), np.array(types, np.int64)
