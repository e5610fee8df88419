"""The single-array layouts of PanNuke and CoNIC, read for `hovernet stats`.

- PanNuke (one fold's folder): `masks.npy`, N x 256 x 256 x 6: channels 0-4 hold the instance
  ids of the neoplastic, inflammatory, connective, dead and epithelial nuclei, channel 5 is
  the background; `types.npy`, N tissue names; `images.npy`, N x 256 x 256 x 3 (not read,
  only its shape is checked).
- CoNIC: `labels.npy`, N x 256 x 256 x 2 = [instance map, class map (1..6)]; `counts.csv`, one
  row per image and one column per class (header: the class names, CoNIC's six or the class
  ids); `images.npy` as PanNuke's.

`find_array_layout(path)` takes such a folder or the `.npy` file itself (an N x H x W x 6 array
is PanNuke's layout, N x H x W x 2 CoNIC's). Arrays are memory-mapped and read one image at a
time. Image i is named by its index, zero-padded to the width of N - 1 (`index_names`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.metrics.multiclass import CONIC_CLASSES, PANNUKE_CLASSES

PANNUKE_MASKS, PANNUKE_TISSUES, IMAGES, CONIC_LABELS, CONIC_COUNTS = (
    "masks.npy",
    "types.npy",
    "images.npy",
    "labels.npy",
    "counts.csv",
)
PANNUKE_SHAPE = "N x 256 x 256 x 6 (channels 0-4: instance ids per class, 5: background)"
CONIC_SHAPE = "N x 256 x 256 x 2 (instance map, class map)"


@dataclass(frozen=True, eq=False)
class ArrayLayout:
    """One PanNuke or CoNIC array of N images (`kind` "pannuke" or "conic")."""

    kind: str
    path: Path  # masks.npy / labels.npy
    array: np.ndarray = field(repr=False)  # memory-mapped N x H x W x (6 or 2)
    tissues: tuple[str, ...] | None = None  # PanNuke's types.npy
    counts: np.ndarray | None = field(default=None, repr=False)  # N x C from counts.csv
    count_classes: tuple[int, ...] = ()  # class id of each counts.csv column

    @property
    def n_images(self) -> int:
        return int(self.array.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.array.shape[1]), int(self.array.shape[2])

    @property
    def class_names(self) -> dict[int, str]:
        return dict(PANNUKE_CLASSES if self.kind == "pannuke" else CONIC_CLASSES)

    def names(self) -> list[str]:
        return index_names(self.n_images)

    def read(self, index: int) -> np.ndarray:
        """PanNuke: the H x W x 5 per-class stack; CoNIC: H x W x 2 [instance, class]."""
        image = np.asarray(self.array[index])
        return image[..., :5] if self.kind == "pannuke" else image


def index_names(n: int, width: int | None = None) -> list[str]:
    """Names of images 0..n-1: the index zero-padded to `width` (default: that of n - 1)."""
    width = width or len(str(max(n - 1, 0)))
    return [f"{i:0{width}d}" for i in range(n)]


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt or pickled files
        raise HoverNetError(
            f"{path}: cannot read this .npy file ({exc}); save it with numpy.save as a "
            "plain (not object) array"
        ) from exc


def find_array_layout(path: str | Path) -> ArrayLayout | None:
    """The PanNuke / CoNIC layout at `path` (its folder or its .npy file), or None when
    `path` is a folder of per-image files."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".npy":
        arr = _load(path)
        if arr.ndim == 4 and arr.shape[-1] in (6, 2):
            return _open(path, arr, "pannuke" if arr.shape[-1] == 6 else "conic")
        raise HoverNetError(
            f"{path}: expected PanNuke masks {PANNUKE_SHAPE} or CoNIC labels {CONIC_SHAPE}, "
            f"got shape {arr.shape}"
        )
    if not path.is_dir():
        return None
    found = [n for n in (PANNUKE_MASKS, CONIC_LABELS) if (path / n).is_file()]
    if len(found) == 2:
        raise HoverNetError(
            f"{path} holds both {PANNUKE_MASKS} (PanNuke) and {CONIC_LABELS} (CoNIC); give the "
            ".npy file to score instead of the folder"
        )
    if not found:
        return None
    kind = "pannuke" if found[0] == PANNUKE_MASKS else "conic"
    return _open(path / found[0], _load(path / found[0]), kind)


def _open(path: Path, arr: np.ndarray, kind: str) -> ArrayLayout:
    channels, expected = (6, PANNUKE_SHAPE) if kind == "pannuke" else (2, CONIC_SHAPE)
    if arr.ndim != 4 or arr.shape[-1] != channels or arr.shape[0] == 0:
        raise HoverNetError(f"{path}: expected {expected}, got shape {arr.shape}")
    n = arr.shape[0]
    _check_images(path.parent / IMAGES, arr.shape)
    if kind == "pannuke":
        return ArrayLayout(kind, path, arr, tissues=_read_tissues(path.parent / PANNUKE_TISSUES, n))
    counts, classes = _read_counts(path.parent / CONIC_COUNTS, n)
    return ArrayLayout(kind, path, arr, counts=counts, count_classes=classes)


def _check_images(path: Path, shape: tuple[int, ...]) -> None:
    if not path.is_file():
        return
    images = _load(path)
    n, h, w = shape[:3]
    if images.shape[:3] != (n, h, w) or images.ndim != 4 or images.shape[-1] != 3:
        raise HoverNetError(
            f"{path}: expected {n} x {h} x {w} x 3 images to go with the labels, got shape "
            f"{images.shape}; keep each fold's images.npy with its own labels"
        )


def _read_tissues(path: Path, n: int) -> tuple[str, ...] | None:
    """PanNuke's tissue name per image; None without types.npy."""
    if not path.is_file():
        return None
    tissues = _load(path)
    if tissues.shape != (n,):
        raise HoverNetError(
            f"{path}: expected {n} tissue names (shape ({n},)), got shape {tissues.shape}; "
            "use the types.npy of the same fold as masks.npy"
        )
    return tuple(str(t) for t in tissues)


def _read_counts(path: Path, n: int) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """counts.csv: N rows of counts, header naming each column's class (a CoNIC class name or
    an id); a column with an empty header (a saved index) is left out."""
    if not path.is_file():
        return None, ()
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = [r for r in csv.reader(fh) if r]
    except (OSError, UnicodeDecodeError) as exc:
        raise HoverNetError(f"{path}: cannot read this CSV file ({exc})") from exc
    if not rows:
        raise HoverNetError(f"{path}: empty; expected a header and {n} rows of counts")
    header, body = [h.strip().lower() for h in rows[0]], rows[1:]
    by_name = {v: k for k, v in CONIC_CLASSES.items()}
    keep = [j for j, h in enumerate(header) if h]
    classes = []
    for j in keep:
        h = header[j]
        if h not in by_name and not h.isdigit():
            raise HoverNetError(
                f"{path}: column '{rows[0][j]}' is neither a CoNIC class "
                f"({', '.join(CONIC_CLASSES.values())}) nor a class id; name each column"
            )
        classes.append(by_name[h] if h in by_name else int(h))
    if len(set(classes)) != len(classes):
        raise HoverNetError(f"{path}: a class has two columns ({rows[0]}); keep one per class")
    if len(body) != n or any(len(r) != len(header) for r in body):
        raise HoverNetError(
            f"{path}: expected {n} rows (one per image of the labels) x {len(header)} "
            f"columns, got {len(body)} rows; use the counts.csv of the same labels.npy"
        )
    try:
        counts = np.array([[float(r[j]) for j in keep] for r in body], np.float64)
    except ValueError as exc:
        raise HoverNetError(f"{path}: counts must be numbers ({exc})") from exc
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise HoverNetError(f"{path}: counts must be finite and >= 0")
    return counts, tuple(classes)
