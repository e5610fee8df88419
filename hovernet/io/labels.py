"""Reading label / prediction files for `hovernet stats`.

Supported files (one per image, matched across folders by name):
- `.mat`: the original's keys: `inst_map` (instance mode); `inst_centroid` (N x 2, [x, y]) and
  `inst_type` (N x 1) for type mode.
- `.npy`: an H x W instance map, or H x W x 2 = [instance map, type map] (CoNIC layout).
- `.tif` / `.tiff` / `.png`: an H x W instance map; `<name>_inst.tif` and `<name>_type.tif`
  are the instance and type maps of image `<name>` (the layout of ../shared/data).
- `.json`: the project's (and the original's) output `{"mag": ..., "nuc": {id: {"bbox",
  "centroid", "contour", "type", "type_prob"}}}`. Instance mode fills the contours (in id
  order, later ones on top) on a canvas the size of the matching truth.

The file name without suffix is the image name; a trailing `_inst` is dropped. When several
files give the same name, the first suffix in LABEL_SUFFIXES wins.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.metrics.detection import instance_centroids
from hovernet.metrics.overlap import as_label_map

LABEL_SUFFIXES = (".mat", ".npy", ".tif", ".tiff", ".png", ".json")


@dataclass(frozen=True)
class LabelFile:
    """The file(s) of one image: instance (or prediction) file and an optional type map."""

    name: str
    path: Path
    type_path: Path | None = None


def list_label_files(folder: str | Path, what: str = "folder") -> dict[str, LabelFile]:
    """Map image name -> LabelFile for the supported files directly inside `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HoverNetError(f"{what} {folder} does not exist or is not a folder; check the path")
    files = label_files_in(folder)
    if not files:
        raise HoverNetError(
            f"{what} {folder} holds no label files ({', '.join(LABEL_SUFFIXES)}); "
            "point it at the folder with the .mat/.npy/.tif/.json files"
        )
    return files


def label_files_in(folder: Path, skip: Collection[Path] = ()) -> dict[str, LabelFile]:
    """`list_label_files` of an existing folder, leaving out the paths in `skip`; may be
    empty."""
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix not in LABEL_SUFFIXES or not path.is_file() or path.name.startswith("."):
            continue
        if path in skip:
            continue
        stem = path.name[: -len(suffix)]
        role = "inst"
        if stem.endswith("_type"):
            stem, role = stem[: -len("_type")], "type"
        elif stem.endswith("_inst"):
            stem = stem[: -len("_inst")]
        slot = found.setdefault(stem, {})
        key = f"{role}{LABEL_SUFFIXES.index(suffix)}"
        slot.setdefault(key, path)
    files = {}
    for name, slot in found.items():
        inst = [slot[k] for k in sorted(slot) if k.startswith("inst")]
        types = [slot[k] for k in sorted(slot) if k.startswith("type")]
        if inst:
            files[name] = LabelFile(name, inst[0], types[0] if types else None)
    return files


def _load_mat(path: Path) -> dict:
    import scipy.io as sio

    try:
        return sio.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for corrupt files
        raise HoverNetError(f"{path}: cannot read this .mat file ({exc})") from exc


def _mat_key(data: dict, key: str, path: Path, mode: str) -> np.ndarray:
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise HoverNetError(
            f"{path}: no '{key}' in this .mat file (keys: {keys}); {mode} mode needs the "
            "original's keys inst_map / inst_centroid / inst_type"
        )
    return np.asarray(data[key])


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HoverNetError(f"{path}: cannot read this JSON file ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("nuc"), dict):
        return data
    if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()):
        return {"mag": None, "nuc": data}  # a bare {id: nucleus} dictionary
    raise HoverNetError(
        f"{path}: expected the HoVer-Net output schema {{'mag': ..., 'nuc': {{id: ...}}}}"
    )


def _nuclei_in_order(data: dict) -> list[tuple[int, dict]]:
    try:
        return sorted((int(k), v) for k, v in data["nuc"].items())
    except ValueError as exc:
        raise HoverNetError(f"nucleus ids in the JSON must be integers ({exc})") from exc


def read_label_array(path: str | Path) -> np.ndarray:
    """The integer array of a label-map file: .npy (memory-mapped), .png or .tif/.tiff."""
    path = Path(path)
    if not path.is_file():
        raise HoverNetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r")
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        if suffix == ".png":
            import cv2

            arr = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise ValueError("cannot decode the PNG")
            return arr
    except Exception as exc:
        raise HoverNetError(f"{path}: cannot read the label map ({exc})") from exc
    raise HoverNetError(f"{path}: label maps must be .npy, .png or .tif")


def _split_channels(arr: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """H x W -> (inst, None); H x W x 1 -> (inst, None); H x W x 2 -> (inst, type)."""
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        return arr[..., 0], (arr[..., 1] if arr.shape[2] == 2 else None)
    if arr.ndim != 2:
        raise HoverNetError(
            f"{path}: expected an H x W instance map (or H x W x 2 = instance, type), "
            f"got shape {arr.shape}"
        )
    return arr, None


def _fill_contours(data: dict, shape: tuple[int, int], path: Path) -> np.ndarray:
    import cv2

    canvas = np.zeros(shape, dtype=np.int32)
    for nid, nuc in _nuclei_in_order(data):
        contour = np.asarray(nuc.get("contour", []), dtype=np.int32).reshape(-1, 2)
        if len(contour) == 0:
            raise HoverNetError(f"{path}: nucleus {nid} has no contour")
        cv2.drawContours(canvas, [contour[:, None, :]], -1, int(nid), thickness=-1)
    return canvas


def read_instance_map(
    file: LabelFile | str | Path, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """The instance map of one image. `.json` needs `shape` (the truth's) to draw contours."""
    if not isinstance(file, LabelFile):
        file = LabelFile(Path(file).stem, Path(file))
    path = file.path
    suffix = path.suffix.lower()
    if suffix == ".mat":
        arr = _mat_key(_load_mat(path), "inst_map", path, "instance")
    elif suffix == ".json":
        if shape is None:
            raise HoverNetError(
                f"{path}: a JSON prediction has no image size; the truth must be a map, not JSON"
            )
        arr = _fill_contours(_load_json(path), shape, path)
    else:
        arr, _ = _split_channels(read_label_array(path), path)
    return as_label_map(arr, str(path))


def read_centroids(file: LabelFile | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(centroids N x 2 [x, y] float64, types (N,) int64) of one image for type mode."""
    if not isinstance(file, LabelFile):
        file = LabelFile(Path(file).stem, Path(file))
    path = file.path
    suffix = path.suffix.lower()
    if suffix == ".mat":
        data = _load_mat(path)
        xy = _mat_key(data, "inst_centroid", path, "type").astype(np.float64)
        types = _mat_key(data, "inst_type", path, "type").reshape(-1)
        xy = xy.reshape(-1, 2) if xy.size else np.zeros((0, 2))
        return xy, _integer_types(types, path)
    if suffix == ".json":
        nuclei = _nuclei_in_order(_load_json(path))
        xy = np.array([n["centroid"] for _, n in nuclei], dtype=np.float64).reshape(-1, 2)
        types = np.array([n.get("type") or 0 for _, n in nuclei], dtype=np.int64)
        return xy, types
    inst, type_map = _split_channels(read_label_array(path), path)
    if file.type_path is not None:
        type_map, _ = _split_channels(read_label_array(file.type_path), file.type_path)
    if type_map is None:
        raise HoverNetError(
            f"{path}: type mode needs nucleus types; give a .mat with inst_centroid/inst_type, "
            f"a JSON output, an H x W x 2 .npy or a {file.name}_type.tif beside it"
        )
    inst = as_label_map(inst, str(path))
    type_map = as_label_map(type_map, str(file.type_path or path))
    if type_map.shape != inst.shape:
        raise HoverNetError(
            f"{file.type_path or path}: type map {type_map.shape} and instance map "
            f"{inst.shape} differ in shape"
        )
    _, xy, types = instance_centroids(inst, type_map)
    return xy, types


def _integer_types(types: np.ndarray, path: Path) -> np.ndarray:
    if types.size and not np.all(np.asarray(types, dtype=np.float64) % 1 == 0):
        raise HoverNetError(f"{path}: inst_type must hold integer type ids")
    return types.astype(np.int64)
