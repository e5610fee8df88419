"""The viewer's tile pyramid, made on the fly by the project's slide reader, with a small cache.

Levels follow Deep Zoom (what OpenSeadragon's custom tile sources use): level `max_level` is
level 0 of the slide, each level below halves it, level 0 is one pixel; level L has downsample
`2 ** (max_level - L)` and `ceil(width / downsample)` x `ceil(height / downsample)` pixels, cut
into `TILE_SIZE` squares (smaller at the right and bottom edges). A tile is read with
`Slide.read` at `slide.mpp * downsample` um/px, so every format slide mode reads (OpenSlide,
tifffile, plain images) serves tiles, from the best pyramid level and resampled as slide mode
reads regions. Encoded tiles are kept in a least-recently-used cache bounded in bytes.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np

TILE_SIZE = 256
JPEG_QUALITY = 85
CACHE_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Pyramid:
    """The Deep Zoom geometry of a `width` x `height` (level-0 pixels) slide."""

    width: int
    height: int
    tile: int = TILE_SIZE

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or self.tile < 1:
            raise ValueError(f"bad pyramid {self.width} x {self.height}, tile {self.tile}")

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height))))

    def downsample(self, level: int) -> int:
        return 2 ** (self.max_level - level)

    def level_size(self, level: int) -> tuple[int, int]:
        d = self.downsample(level)
        return -(-self.width // d), -(-self.height // d)

    def tile_counts(self, level: int) -> tuple[int, int]:
        w, h = self.level_size(level)
        return -(-w // self.tile), -(-h // self.tile)

    def tile_box(self, level: int, x: int, y: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) of tile (x, y) in the pixels of `level`; ValueError when there is no
        such tile."""
        if not 0 <= level <= self.max_level:
            raise ValueError(f"level {level} is not in 0..{self.max_level}")
        nx, ny = self.tile_counts(level)
        if not (0 <= x < nx and 0 <= y < ny):
            raise ValueError(f"tile {x}, {y} is not in 0..{nx - 1} x 0..{ny - 1} at level {level}")
        w, h = self.level_size(level)
        x0, y0 = x * self.tile, y * self.tile
        return x0, y0, min(self.tile, w - x0), min(self.tile, h - y0)


def read_tile(slide, pyramid: Pyramid, level: int, x: int, y: int) -> np.ndarray:
    """RGB uint8 pixels of one tile, read through `slide.read` (a `hovernet.io.wsi.Slide`)."""
    x0, y0, w, h = pyramid.tile_box(level, x, y)
    return slide.read(x0, y0, w, h, slide.mpp * pyramid.downsample(level))


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    import cv2

    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG tile")
    return buf.tobytes()


class TileCache:
    """Encoded tiles by key, least recently used first out, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)
