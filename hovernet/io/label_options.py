"""How an annotation file becomes labels, beyond its format and its image's size: the settings
`hovernet.io.annotations.open_labels` passes to the reader of each format."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from hovernet.io.type_info import TypeInfo


@dataclass(frozen=True)
class LabelOptions:
    """`type_info`: class names and colours (colour masks, GeoJSON, points; None: untyped).
    `merge`: class merging of instance maps and CoNSeP .mat files (`merge_table`). Colour masks:
    `min_size` (smallest nucleus kept, px), `tolerance` (colours snapped within it, for JPEG
    masks), `workdir` (where their temporary label file goes; None: the system's). `points`:
    keyword arguments of `hovernet.io.points.open_points` (classes, base, radius)."""

    type_info: TypeInfo | None = None
    merge: str | dict | None = None
    min_size: int = 10
    tolerance: int = 0
    workdir: str | os.PathLike | None = None
    points: Mapping | None = None

    def __post_init__(self) -> None:
        if self.merge is not None and not isinstance(self.merge, str | dict):
            raise TypeError(f"merge must be a table name or a dict, got {self.merge!r}")
        if self.points is not None and not isinstance(self.points, Mapping):
            raise TypeError(f"points must be a mapping of open_points options, got {self.points!r}")
