"""Label maps of whole slides as tiled pyramidal TIFFs, written tile by tile.

`write_label_pyramid(path, (height, width), read_tile, mpp)` asks `read_tile(x, y, w, h)` for the
level-0 labels one tile at a time and writes a tiled, deflate-compressed TIFF with one page per
pyramid level (each half the size of the one before, nearest-neighbour, so that labels stay
labels) down to a single tile. Memory stays at a few tiles whatever the slide size; the file
appears under its name only when complete.

Layout: levels are separate top-level pages, reduced ones marked as such (NewSubfileType = 1),
with the slide's resolution in the TIFF resolution tags. This is the layout OpenSlide reads as a
pyramid (it ignores sub-IFD pyramids) and tifffile, QuPath and libvips open as well.
8- and 16-bit labels (e.g. type maps) are stored as grey pixels. OpenSlide cannot decode 32-bit
samples, so wider labels (instance ids) are stored as 24-bit RGB, id = R * 65536 + G * 256 + B
(`decode_rgb24`), which allows 16.7 million nuclei per slide; the ImageDescription says which.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hovernet.io.atomic import atomic_path

MAX_RGB24 = 2**24 - 1
COMPRESSION = "zlib"  # deflate


def encode_rgb24(labels: np.ndarray) -> np.ndarray:
    """Integer labels < 2**24 as (h, w, 3) uint8 RGB (R high byte, B low byte)."""
    lab = np.asarray(labels)
    if lab.size and (lab.min() < 0 or lab.max() > MAX_RGB24):
        raise ValueError(f"labels must lie in 0..{MAX_RGB24} to be stored as 24-bit RGB")
    lab = lab.astype(np.uint32)
    return np.stack([(lab >> 16) & 255, (lab >> 8) & 255, lab & 255], axis=-1).astype(np.uint8)


def decode_rgb24(rgb: np.ndarray) -> np.ndarray:
    """The uint32 labels of an RGB(A) array written by `encode_rgb24`."""
    rgb = np.asarray(rgb)[..., :3].astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def pyramid_shapes(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """(height, width) of each level: halved (rounded up) until the level fits one tile."""
    h, w = int(shape[0]), int(shape[1])
    shapes = [(h, w)]
    while max(h, w) > tile:
        h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w))
    return shapes


class _PageTiles:
    """Decoded tiles of one written page (for building the next level)."""

    def __init__(self, path: Path, level: int):
        import tifffile

        self._tif = tifffile.TiffFile(path)
        page = self._tif.pages[level]
        self._offsets = list(page.dataoffsets)
        self._counts = list(page.databytecounts)
        self._decode = page.decode
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self._per_row = -(-self.width // int(page.tilewidth))
        self._fd = os.open(path, os.O_RDONLY)

    def tile(self, tx: int, ty: int) -> np.ndarray:
        index = ty * self._per_row + tx
        data = os.pread(self._fd, self._counts[index], self._offsets[index])
        seg, _, _ = self._decode(data, index)
        return seg.reshape(seg.shape[1:]) if seg.shape[0] == 1 else seg  # (rows, cols, samples)

    def close(self) -> None:
        os.close(self._fd)
        self._tif.close()


def write_label_pyramid(
    path: str | os.PathLike,
    shape: tuple[int, int],
    read_tile: Callable[[int, int, int, int], np.ndarray],
    mpp: float,
    tile: int = 512,
    dtype: np.dtype | type | str = np.uint32,
) -> Path:
    """Write a tiled pyramidal TIFF of the (height, width) label map that `read_tile` serves.

    `read_tile(x, y, w, h)` returns the (h, w) integer labels of level 0 at column x, row y; it is
    called once per level-0 tile, in row-major order. `mpp` (level-0 microns per pixel) goes
    into the resolution tags. `dtype` uint8/uint16 is stored as grey, anything wider as 24-bit
    RGB (see the module docstring). Returns the path written.
    """
    import tifffile

    path = Path(path)
    layout = _Layout((int(shape[0]), int(shape[1])), tile, dtype, mpp)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=layout.bigtiff) as tw:
            tw.write(layout.level0_tiles(read_tile), **layout.options(0))
        for level in range(1, len(layout.shapes)):
            prev = _PageTiles(tmp, level - 1)
            try:
                with tifffile.TiffWriter(tmp, bigtiff=layout.bigtiff, append=True) as tw:
                    tw.write(layout.reduced_tiles(prev, level), **layout.options(level))
            finally:
                prev.close()
    return path


@dataclass(frozen=True)
class _Layout:
    """How a label pyramid is stored: level 0's (height, width), the tile side, the labels'
    dtype (grey up to 16 bits, else 24-bit RGB) and the level-0 resolution; `shapes`: every
    level's (height, width)."""

    level0: tuple[int, int]
    tile: int
    dtype: np.dtype
    mpp: float
    shapes: tuple[tuple[int, int], ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.tile % 16 or self.tile <= 0:
            raise ValueError(f"tile must be a positive multiple of 16, got {self.tile}")
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp!r}")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.dtype.kind not in "ui":
            raise ValueError(f"label maps must be integers, got {self.dtype}")
        object.__setattr__(self, "shapes", tuple(pyramid_shapes(self.level0, self.tile)))

    @property
    def rgb24(self) -> bool:
        return self.dtype.itemsize > 2

    @property
    def samples(self) -> int:
        return 3 if self.rgb24 else 1

    @property
    def store_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.rgb24 else self.dtype

    @property
    def bigtiff(self) -> bool:
        pixels = sum(h * w for h, w in self.shapes)
        return pixels * self.samples * self.store_dtype.itemsize > 2**31

    def empty_tile(self) -> np.ndarray:
        return np.zeros((self.tile, self.tile, self.samples), self.store_dtype)

    def level0_tiles(self, read_tile: Callable[[int, int, int, int], np.ndarray]):
        height, width = self.shapes[0]
        tile = self.tile
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                h, w = min(tile, height - y), min(tile, width - x)
                labels = np.asarray(read_tile(x, y, w, h))
                if labels.shape != (h, w):
                    raise ValueError(
                        f"read_tile({x}, {y}, {w}, {h}) returned shape {labels.shape}, "
                        f"expected {(h, w)}"
                    )
                out = self.empty_tile()
                out[:h, :w] = (
                    encode_rgb24(labels) if self.rgb24 else labels.astype(self.dtype)[:, :, None]
                )
                yield out

    def reduced_tiles(self, prev: _PageTiles, level: int):
        lh, lw = self.shapes[level]
        tile, half = self.tile, self.tile // 2
        for ty in range(-(-lh // tile)):
            for tx in range(-(-lw // tile)):
                out = self.empty_tile()
                # tile (tx, ty) of this level = every second pixel of 2 x 2 tiles of the last
                for dy in range(2):
                    for dx in range(2):
                        px, py = 2 * tx + dx, 2 * ty + dy
                        if px * tile >= prev.width or py * tile >= prev.height:
                            continue
                        src = prev.tile(px, py)
                        out[dy * half : (dy + 1) * half, dx * half : (dx + 1) * half] = src[
                            ::2, ::2
                        ].reshape(half, half, self.samples)
                yield out

    def options(self, level: int) -> dict:
        """tifffile's `write` arguments for page `level`."""
        height, width = self.shapes[0]
        lh, lw = self.shapes[level]
        level_mpp = self.mpp * (width / lw + height / lh) / 2
        return {
            "shape": (lh, lw, self.samples) if self.rgb24 else (lh, lw),
            "dtype": self.store_dtype,
            "tile": (self.tile, self.tile),
            "compression": COMPRESSION,
            "photometric": "rgb" if self.rgb24 else "minisblack",
            "resolution": (1e4 / level_mpp, 1e4 / level_mpp),
            "resolutionunit": "CENTIMETER",
            "subfiletype": 1 if level else 0,
            "metadata": None,
            "description": self.description() if level == 0 else None,
        }

    def description(self) -> str:
        return json.dumps(
            {
                "hovernet": "label pyramid",
                "labels": str(self.dtype),
                "encoding": "rgb24: id = R*65536 + G*256 + B" if self.rgb24 else "grey",
                "mpp": self.mpp,
            }
        )
