"""Annotated images in memory: an image and its annotation -> (image, instance map, type map).

For images that fit in memory (tests, small data sets); `hovernet.data.extraction` streams large
pairs band by band instead. The readers are `hovernet.io.annotations`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hovernet.data.patches import relabel_window
from hovernet.errors import HoverNetError
from hovernet.io.annotations import (
    MERGED_TYPE_INFO,
    LabelOptions,
    detect_format,
    open_labels,
    read_original_patch,
)
from hovernet.io.slides import open_image
from hovernet.io.type_info import TypeInfo


@dataclass
class AnnotatedImage:
    """The internal form in memory: RGB image, instance map (1..N) and optional type map."""

    image: np.ndarray
    inst: np.ndarray
    type: np.ndarray | None
    type_info: TypeInfo | None = None


def labels_to_arrays(labels) -> tuple[np.ndarray, np.ndarray | None]:
    """Whole instance map (ids 1..N, gaps removed, smallest uint) and per-pixel type map."""
    inst, source = relabel_window(labels.read_rows(0, labels.height))
    types = None if labels.inst_type is None else labels.inst_type[source][inst]
    return inst, types


def load_annotated(
    image_path: str | os.PathLike | None,
    ann_path: str | os.PathLike,
    fmt: str = "auto",
    *,
    type_info: TypeInfo | None = None,
    merge: str | dict | None = None,
    min_size: int = 10,
    tolerance: int = 0,
    points: dict | None = None,
) -> AnnotatedImage:
    """Read an image and its annotation into memory (for images that fit; see open_labels).
    Point CSVs: `points` = {"classes": {name: class}, "base": 0 or 1, "radius": px}; `inst`
    then holds a disk per labelled point (see hovernet.io.points)."""
    fmt = detect_format(ann_path, type_info is not None) if fmt == "auto" else fmt
    if fmt == "patch":
        image, labels = read_original_patch(ann_path)
    else:
        if image_path is None:
            raise HoverNetError(f"{ann_path}: the {fmt} format needs its image")
        with open_image(image_path) as reader:
            image = reader.read_region(0, 0, reader.width, reader.height)
        options = LabelOptions(type_info, merge, min_size, tolerance, points=points)
        labels = open_labels(ann_path, fmt, shape=image.shape[:2], options=options)
    try:
        inst, types = labels_to_arrays(labels)
    finally:
        labels.close()
    if type_info is None and fmt == "mat" and types is not None and merge == "consep":
        type_info = MERGED_TYPE_INFO["consep"]
    return AnnotatedImage(image, inst, types, type_info)
