"""Colour-coded class masks -> instances, in bounded memory.

A colour mask paints every nucleus pixel with its class colour (`type_info.json`). Instances are
the 8-connected components of each colour. A 10,000 x 14,000 mask is labelled strip by strip:
each strip is labelled on its own (scipy.ndimage.label per class), provisional labels are written
to a temporary file, components that touch across a strip border are joined with a graph
(scipy.sparse.csgraph.connected_components), and a lookup table maps provisional labels to final
consecutive ids. Memory is a few strips plus one lookup entry per component; the full label map
lives on disk (4 bytes per pixel) and is read back band by band.
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.label_options import LabelOptions
from hovernet.io.slides import ImageReader, open_image

UNKNOWN = 255
EIGHT = np.ones((3, 3), dtype=bool)


class EmptyMaskWarning(UserWarning):
    """A mask without any nucleus pixel."""


def classify_colours(rgb: np.ndarray, colours: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """Class index per pixel (index into `colours`), UNKNOWN where no colour matches.

    With `tolerance` > 0 a pixel takes the nearest colour (largest channel difference) when that
    difference is at most `tolerance` (for JPEG-compressed masks).
    """
    if len(colours) >= UNKNOWN:
        raise HoverNetError(f"at most {UNKNOWN - 1} classes are supported, got {len(colours)}")
    out = np.full(rgb.shape[:2], UNKNOWN, np.uint8)
    if tolerance <= 0:
        key = _colour_key(rgb)
        for k, colour in enumerate(colours):
            out[key == _colour_key(np.asarray(colour).reshape(1, 1, 3))[0, 0]] = k
        return out
    best = np.full(rgb.shape[:2], tolerance + 1, np.int16)
    for k, colour in enumerate(colours):
        diff = np.abs(rgb.astype(np.int16) - np.asarray(colour, np.int16)).max(axis=2)
        closer = diff < best
        out[closer] = k
        best[closer] = diff[closer]
    return out


def _colour_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class ColourMaskLabels:
    """Instances of a colour mask, readable band by band (see the module docstring).

    Attributes: `height`, `width`, `n_instances`, `inst_type` (class id of each instance,
    index 0 = background), `path`. `read_rows(y0, y1)` returns uint32 instance ids.
    """

    def __init__(
        self,
        path: Path,
        options: LabelOptions,
        *,
        strip_rows: int = 1024,
        expect_size: tuple[int, int] | None = None,
    ):
        """The mask at `path`, painted in the colours of `options.type_info`, labelled with
        `options.min_size` and `options.tolerance` in bands of `strip_rows` rows into a
        temporary file under `options.workdir`; `expect_size` (H, W): its image's size."""
        self.path = Path(path)
        type_info = options.type_info
        if type_info is None:
            raise HoverNetError(f"{path}: colour masks need --type-info type_info.json")
        ids = sorted(type_info)
        colours = np.array([type_info[i][1] for i in ids], np.int32)
        class_ids = np.array(ids, np.uint8)
        reader = open_image(self.path)
        try:
            self.height, self.width = reader.height, reader.width
            if expect_size is not None and (self.height, self.width) != tuple(expect_size):
                raise HoverNetError(
                    f"{self.path}: mask is {self.width} x {self.height} px but its image is "
                    f"{expect_size[1]} x {expect_size[0]} px; give the mask made for that image"
                )
            self._tmpdir = tempfile.TemporaryDirectory(
                prefix=".hovernet-labels-", dir=options.workdir
            )
            self._file = Path(self._tmpdir.name) / "labels.u32"
            lookup, inst_type = self._label(
                reader, colours, class_ids, options.min_size, options.tolerance, strip_rows
            )
        except BaseException:
            self.close()
            raise
        finally:
            reader.close()
        self._lookup = lookup
        self.inst_type = inst_type
        self.n_instances = len(inst_type) - 1
        if self.n_instances == 0:
            warnings.warn(
                f"{self.path}: the mask has no nucleus pixels (only background colour); "
                "its patches will have no nuclei",
                EmptyMaskWarning,
                stacklevel=2,
            )

    def _label(self, reader: ImageReader, colours, class_ids, min_size, tolerance, strip_rows):
        from scipy import ndimage

        sizes: list[np.ndarray] = [np.zeros(1, np.int64)]  # provisional label 0 = background
        classes: list[np.ndarray] = [np.zeros(1, np.uint8)]
        edges: list[np.ndarray] = []
        unknown: Counter = Counter()
        total = 1  # next provisional label
        prev_row = None
        with open(self._file, "wb") as out:
            for y0 in range(0, self.height, strip_rows):
                rgb = reader.read_region(0, y0, self.width, min(strip_rows, self.height - y0))
                cls = classify_colours(rgb, colours, tolerance)
                if (cls == UNKNOWN).any():
                    _count_unknown(rgb[cls == UNKNOWN], unknown)
                if unknown:
                    continue  # keep scanning only to report every unknown colour
                del rgb
                labels = np.zeros(cls.shape, np.uint32)
                for k, cid in enumerate(class_ids):
                    if cid == 0:
                        continue
                    part, n = ndimage.label(cls == k, structure=EIGHT, output=np.int32)
                    if n == 0:
                        continue
                    hit = part > 0
                    labels[hit] = part[hit].astype(np.uint32) + np.uint32(total - 1)
                    sizes.append(np.bincount(part[hit], minlength=n + 1)[1:])
                    classes.append(np.full(n, cid, np.uint8))
                    total += n
                if prev_row is not None:
                    edges.append(_touching(prev_row, labels[0]))
                prev_row = labels[-1].copy()
                labels.tofile(out)
        if unknown:
            self._raise_unknown(unknown, colours, class_ids)
        return _resolve(total, np.concatenate(sizes), np.concatenate(classes), edges, min_size)

    def _raise_unknown(self, unknown: Counter, colours, class_ids) -> None:
        listed = ", ".join(
            f"({k >> 16}, {(k >> 8) & 255}, {k & 255}): {n} px" for k, n in unknown.most_common(10)
        )
        more = f" and {len(unknown) - 10} more colours" if len(unknown) > 10 else ""
        known = ", ".join(
            f"{cid}={tuple(int(v) for v in c)}" for cid, c in zip(class_ids, colours, strict=True)
        )
        raise HoverNetError(
            f"{self.path}: mask colours not in type_info: {listed}{more}. Known colours: {known}. "
            "Add them to type_info.json, or pass --colour-tolerance N to snap colours within N "
            "(for JPEG-compressed masks)"
        )

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Final instance ids (uint32) of rows y0..y1-1, all columns."""
        count = (y1 - y0) * self.width
        raw = np.fromfile(self._file, np.uint32, count=count, offset=y0 * self.width * 4)
        return self._lookup[raw.reshape(y1 - y0, self.width)]

    def close(self) -> None:
        tmp = getattr(self, "_tmpdir", None)
        if tmp is not None:
            tmp.cleanup()
            self._tmpdir = None

    def __enter__(self) -> ColourMaskLabels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count_unknown(pixels: np.ndarray, counter: Counter, cap: int = 100_000) -> None:
    keys, counts = np.unique(_colour_key(pixels), return_counts=True)
    for k, n in zip(keys.tolist(), counts.tolist(), strict=True):
        if k in counter or len(counter) < cap:
            counter[k] += n


def _touching(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Label pairs (a, b) of 8-neighbours across a strip border, same class by construction.

    Labels of different classes can be neighbours; the caller drops pairs whose classes differ.
    """
    pairs = []
    for shift in (-1, 0, 1):
        a = upper[max(shift, 0) : len(upper) + min(shift, 0)]
        b = lower[max(-shift, 0) : len(lower) + min(-shift, 0)]
        both = (a > 0) & (b > 0)
        pairs.append(np.stack([a[both], b[both]], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def _resolve(total, sizes, classes, edges, min_size):
    """Join provisional labels across strips, drop small components, number the rest 1..N."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate(edges) if edges else np.zeros((0, 2), np.uint32)
    pairs = pairs[classes[pairs[:, 0]] == classes[pairs[:, 1]]]
    graph = coo_matrix(
        (np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total, total)
    )
    _, comp = connected_components(graph, directed=False)
    comp_size = np.bincount(comp, weights=sizes)
    keep = comp_size >= max(min_size, 1)
    keep[comp[0]] = False  # background
    final = np.zeros(len(comp_size), np.uint32)
    final[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    lookup = final[comp]
    inst_type = np.zeros(int(keep.sum()) + 1, np.uint8)
    inst_type[lookup] = classes
    inst_type[0] = 0  # dropped components were written to index 0 above
    return lookup, inst_type
