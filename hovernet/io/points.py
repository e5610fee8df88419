"""Point annotations: a class at each nucleus centre, no outline (`--format points`).

File: a CSV with a header naming the columns `x`, `y` and (optionally) `class`, one nucleus per
row. x is the column and y the row of the nucleus centre, in pixels of the image, real numbers
allowed. `base` says where the first pixel's centre is: 0 (NumPy, QuPath-style indices; the
default) or 1 (MATLAB; CRCHisto's files). An empty class (or no class column) is an unlabelled
nucleus: it gets no type target.

For training, each labelled point becomes a small disk (`radius` px) of its class, one instance
per point, so that the extraction code can cut windows from it like any other annotation; the
patches are flagged as point patches and training uses them for the type branch only.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.type_info import TypeInfo

POINT_RADIUS = 3.0  # default disk radius in pixels (1.5 um at 20x, 0.75 um at 40x)
UNLABELLED = ("", "-", "none", "unlabelled", "unlabeled")


@dataclass(frozen=True)
class PointTable:
    """Points of one file: 0-based x (column) and y (row) and the class name ("" unlabelled)."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    names: list[str]
    lines: list[int]  # the file line of each point (for messages)


def read_points(path: str | os.PathLike, base: int = 0) -> PointTable:
    """Read a points CSV (see the module docstring); any bad row is one HoverNetError naming
    the file and the line."""
    path = Path(path)
    if base not in (0, 1):
        raise HoverNetError(f"--point-base {base}: use 0 (first pixel at 0) or 1 (MATLAB)")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise HoverNetError(f"{path}: cannot read the points file ({exc})") from exc
    if not rows:
        raise HoverNetError(f"{path}: empty points file; expected a header line x,y,class")
    header = [h.strip().lower() for h in rows[0]]
    if "x" not in header or "y" not in header:
        raise HoverNetError(
            f"{path}, line 1: the header must name the columns x and y (and class), got "
            f"{','.join(rows[0])}"
        )
    ix, iy = header.index("x"), header.index("y")
    ic = header.index("class") if "class" in header else None
    xs, ys, names, lines = [], [], [], []
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        try:
            x, y = float(row[ix]), float(row[iy])
        except (IndexError, ValueError):
            raise HoverNetError(
                f"{path}, line {number}: expected numbers in columns x and y, got "
                f"{','.join(row)!r}; fix or delete that line"
            ) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise HoverNetError(f"{path}, line {number}: x and y must be finite numbers")
        name = row[ic].strip() if ic is not None and ic < len(row) else ""
        xs.append(x - base)
        ys.append(y - base)
        names.append(name)
        lines.append(number)
    return PointTable(path, np.array(xs, float), np.array(ys, float), names, lines)


def parse_point_classes(text: str | None) -> dict[str, str]:
    """`"fibroblast=spindle-shaped,others=other"` -> {source name: type_info name} (lower
    case); a target of `-` drops that class (no type target)."""
    table: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        source, sep, target = part.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise HoverNetError(
                f"--point-classes {text!r}: expected name=class pairs separated by commas, "
                "e.g. fibroblast=spindle-shaped,others=other"
            )
        table[source.strip().lower()] = target.strip().lower()
    return table


def point_class_ids(
    table: PointTable, type_info: TypeInfo | None, classes: dict[str, str] | None = None
) -> np.ndarray:
    """Type id of each point (0 = unlabelled, no type target), by name through `classes`
    then `type_info` (any case). Unknown names: one error listing them and the fix."""
    if type_info is None:
        raise HoverNetError(
            f"{table.path}: point annotations need --type-info type_info.json (the classes "
            "the type branch learns)"
        )
    by_name = {name.lower(): k for k, (name, _) in type_info.items() if k > 0}
    classes = classes or {}
    ids = np.zeros(len(table.names), np.uint8)
    unknown: dict[str, int] = {}
    for i, name in enumerate(table.names):
        key = classes.get(name.lower(), name.lower())
        if key in UNLABELLED:
            continue
        if key not in by_name:
            unknown.setdefault(name, table.lines[i])
            continue
        ids[i] = by_name[key]
    if unknown:
        listed = ", ".join(f"{n!r} (line {line})" for n, line in unknown.items())
        raise HoverNetError(
            f"{table.path}: classes not in the type_info ({', '.join(by_name)}): {listed}; "
            "map them with --point-classes name=class,... (class '-' drops one)"
        )
    return ids


class PointLabels:
    """Labelled points as disks of `radius` px, one instance per point (later points win where
    disks overlap): the labels interface of `hovernet.io.annotations` (`read_rows`, ...).
    `points` is True: patches cut from it carry type targets only."""

    points = True

    def __init__(self, table: PointTable, ids: np.ndarray, shape, radius: float = POINT_RADIUS):
        if radius <= 0:
            raise HoverNetError(f"--point-radius {radius}: must be above 0 pixels")
        self.path = table.path
        self.height, self.width = (int(v) for v in shape)
        m = 0.5 + radius  # a centre just off the edge (annotators click there) still has a disk
        outside = (
            (table.x < -m) | (table.y < -m)
            | (table.x > self.width - 1 + m) | (table.y > self.height - 1 + m)
        )  # fmt: skip
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise HoverNetError(
                f"{table.path}, line {table.lines[i]}: point ({table.x[i]:g}, {table.y[i]:g}) "
                f"(0-based) lies outside the {self.width} x {self.height} image by more than "
                f"--point-radius {radius:g} px; check "
                "--point-base (1 for MATLAB coordinates) and that the file belongs to this image"
            )
        keep = ids > 0
        self._x, self._y, self._r = table.x[keep], table.y[keep], float(radius)
        self.n_instances = int(keep.sum())
        self.inst_type = np.concatenate([[0], ids[keep]]).astype(np.uint8)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        out = np.zeros((y1 - y0, self.width), np.uint32)
        r = self._r
        hit = np.flatnonzero((self._y + r >= y0) & (self._y - r < y1))
        for i in hit:  # later points overwrite earlier ones
            cx, cy = self._x[i], self._y[i]
            r0, r1 = max(int(np.ceil(cy - r)), y0), min(int(np.floor(cy + r)), y1 - 1)
            c0, c1 = max(int(np.ceil(cx - r)), 0), min(int(np.floor(cx + r)), self.width - 1)
            if r0 > r1 or c0 > c1:
                continue
            yy, xx = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            out[yy[inside] - y0, xx[inside]] = i + 1
        return out

    def close(self) -> None:
        pass


def open_points(
    path, shape, type_info: TypeInfo | None, *, classes=None, base: int = 0, radius=POINT_RADIUS
) -> PointLabels:
    """Read a points CSV and return its labels object for an image of `shape` (H, W)."""
    table = read_points(path, base)
    return PointLabels(table, point_class_ids(table, type_info, classes), shape, radius)
