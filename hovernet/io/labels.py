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

`read_instance_map` (instance mode), `read_centroids` (type mode) and `read_typed_map` (the
per-class modes: instance map and per-pixel type map) read one image.
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


def _mat_key(
    data: dict, key: str, path: Path, mode: str, needs: str = "inst_map / inst_centroid / inst_type"
) -> np.ndarray:
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise HoverNetError(
            f"{path}: no '{key}' in this .mat file (keys: {keys}); {mode} mode needs the "
            f"original's keys {needs}"
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
    if arr.ndim == 4:
        raise HoverNetError(
            f"{path}: an array of {arr.shape[0]} images ({arr.shape}) is a dataset, not one "
            "image; score PanNuke masks.npy (N x H x W x 6) with --mode pannuke and CoNIC "
            "labels.npy (N x H x W x 2) with --mode conic, giving its folder"
        )
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
    inst, type_map = _map_files_with_types(file, "type mode", "inst_centroid/inst_type")
    _, xy, types = instance_centroids(inst, type_map)
    return xy, types


def _map_files_with_types(file: LabelFile, mode: str, mat_keys: str) -> tuple[np.ndarray, ...]:
    """(instance map, type map) of a .npy / .tif / .png image (H x W x 2, or a _type file)."""
    path = file.path
    inst, type_map = _split_channels(read_label_array(path), path)
    if file.type_path is not None:
        type_map, _ = _split_channels(read_label_array(file.type_path), file.type_path)
    if type_map is None:
        raise HoverNetError(
            f"{path}: {mode} needs nucleus types; give a .mat with {mat_keys}, "
            f"a JSON output, an H x W x 2 .npy or a {file.name}_type.tif beside it"
        )
    inst = as_label_map(inst, str(path))
    type_map = as_label_map(type_map, str(file.type_path or path))
    _same_shape(type_map, inst, file.type_path or path)
    return inst, type_map


def _same_shape(type_map: np.ndarray, inst: np.ndarray, path: Path) -> None:
    if type_map.shape != inst.shape:
        raise HoverNetError(
            f"{path}: type map {type_map.shape} and instance map {inst.shape} differ in shape"
        )


def _types_per_pixel(inst: np.ndarray, ids, types, path: Path) -> np.ndarray:
    """Per-pixel type map from one type per nucleus id (ids absent from the list: type 0)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    types = _integer_types(np.asarray(types).reshape(-1), path)
    if len(ids) != len(types):
        raise HoverNetError(f"{path}: {len(types)} nucleus types for {len(ids)} nucleus ids")
    if ids.size and ids.min() < 0:
        raise HoverNetError(f"{path}: nucleus ids must be >= 0")
    top = max(int(inst.max()) if inst.size else 0, int(ids.max()) if ids.size else 0)
    lut = np.zeros(top + 1, np.int64)
    lut[ids] = types
    return np.where(inst > 0, lut[inst], 0)


def read_typed_map(
    file: LabelFile | str | Path, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(instance map, per-pixel type map) of one image for the per-class modes (pannuke,
    conic). A `.mat` gives its `type_map`, else `inst_type` per id of `inst_uid` (without
    `inst_uid`: row k is id k + 1, the original's labels); a `.json` fills the contours
    (needs `shape`) with each nucleus' `type`."""
    if not isinstance(file, LabelFile):
        file = LabelFile(Path(file).stem, Path(file))
    path = file.path
    suffix = path.suffix.lower()
    mode, needs = "pannuke / conic", "inst_map and type_map (or inst_type [+ inst_uid])"
    if suffix == ".json":
        data = _load_json(path)
        inst = read_instance_map(file, shape)
        nuclei = _nuclei_in_order(data)
        types = [n.get("type") or 0 for _, n in nuclei]
        return inst, _types_per_pixel(inst, [k for k, _ in nuclei], types, path)
    if suffix != ".mat":
        return _map_files_with_types(file, f"{mode} mode", needs)
    data = _load_mat(path)
    inst = as_label_map(_mat_key(data, "inst_map", path, mode, needs), str(path))
    if "type_map" in data:
        type_map = as_label_map(np.asarray(data["type_map"]), f"{path} type_map")
        _same_shape(type_map, inst, path)
        return inst, type_map
    types = _mat_key(data, "inst_type", path, mode, needs).reshape(-1)
    if "inst_uid" in data:
        ids = np.asarray(data["inst_uid"]).reshape(-1)
    else:
        ids = np.arange(1, len(types) + 1)
        if inst.size and inst.max() > len(types):
            raise HoverNetError(
                f"{path}: inst_map has id {inst.max()} but inst_type has {len(types)} rows and "
                "there is no inst_uid to say which id each row is; add inst_uid or type_map"
            )
    return inst, _types_per_pixel(inst, ids, types, path)


def _integer_types(types: np.ndarray, path: Path) -> np.ndarray:
    if types.size and not np.all(np.asarray(types, dtype=np.float64) % 1 == 0):
        raise HoverNetError(f"{path}: inst_type must hold integer type ids")
    return types.astype(np.int64)
