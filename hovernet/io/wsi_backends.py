"""Slide backends behind `hovernet.io.wsi.Slide`: OpenSlide, tifffile and plain images.

A backend has `levels` ((width, height) per pyramid level, level 0 first), `mpp` and
`magnification` from the file (or None), and `read_level(level, x, y, w, h)`, which returns
RGB uint8 (h, w, 3) for a box inside that level. `read_level` is thread-safe.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io import tiff_checks
from hovernet.io.slides import (
    PLAIN_SUFFIXES,
    SLIDE_SUFFIXES,
    TIFF_SUFFIXES,
    _read_plain_bgr,
)

# images that can only be decoded whole (PNG, JPEG, TIFF stored as one compressed block) are
# refused above this decoded size (bytes); override with HOVERNET_MAX_DECODE_MB
DEFAULT_MAX_DECODE_BYTES = 2 * 1024**3
# plausible microscope resolutions; a TIFF saying 72 dpi is not a 353 um/px scan
MPP_RANGE = (0.01, 20.0)
WSI_SUFFIXES = SLIDE_SUFFIXES | {".dcm"}
SUFFIXES = PLAIN_SUFFIXES | TIFF_SUFFIXES | WSI_SUFFIXES
CONVERT_HINT = (
    "convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid "
    "--compression jpeg --Q 90`"
)


def max_decode_bytes() -> int:
    env = os.environ.get("HOVERNET_MAX_DECODE_MB")
    return int(float(env) * 1024**2) if env else DEFAULT_MAX_DECODE_BYTES


def _plausible_mpp(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value) if MPP_RANGE[0] <= value <= MPP_RANGE[1] else None


def _float(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _composite(arr: np.ndarray, premultiplied: bool) -> np.ndarray:
    """RGB(A) or grey uint8 -> RGB on white."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 2:  # grey + alpha
        arr = np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    rgb, alpha = arr[:, :, :3], arr[:, :, 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    white = 255 - alpha.astype(np.uint16)
    if premultiplied:
        out = rgb.astype(np.uint16) + white
    else:
        out = (rgb.astype(np.uint16) * alpha + 255 * white + 127) // 255
    return np.minimum(out, 255).astype(np.uint8)


class Backend:
    name = "?"
    levels: list[tuple[int, int]]
    mpp: float | None = None
    mpp_source: str = ""
    mpp_note: str = ""  # why the file's resolution was not used, for the error message
    magnification: float | None = None

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# OpenSlide


class OpenSlideBackend(Backend):
    name = "openslide"

    def __init__(self, path: Path, osr):
        import openslide

        self.path, self._osr = path, osr
        self._error = openslide.OpenSlideError
        self.levels = [tuple(map(int, d)) for d in osr.level_dimensions]
        self._downsamples = list(osr.level_downsamples)
        props = osr.properties
        raw = _float(props.get("openslide.mpp-x"))
        self.mpp = _plausible_mpp(raw)
        self.mpp_source = "openslide.mpp-x"
        if raw is not None and self.mpp is None:
            self.mpp_note = f"openslide.mpp-x = {raw:g} is not a microscope resolution"
        self.magnification = _float(props.get("openslide.objective-power"))

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self._downsamples[level]
        location = (x, y) if level == 0 else (round(x * ds), round(y * ds))
        try:
            rgba = np.asarray(self._osr.read_region(location, level, (w, h)))
        except self._error as exc:  # the handle is unusable afterwards: the slide fails
            part = tiff_checks.region_label(x, y, w, h, level, self.levels[level])
            raise tiff_checks.decode_error(self.path, part, exc) from exc
        return _composite(rgba, premultiplied=True)

    def close(self) -> None:
        self._osr.close()


def _try_openslide(path: Path):
    import openslide

    try:
        return openslide.OpenSlide(str(path)), None
    except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, ...
        return None, exc


# ---------------------------------------------------------------------------------------------
# tifffile


class _LRU:
    """A small thread-safe byte-bounded cache of decoded segments."""

    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key, arr: np.ndarray) -> None:
        with self._lock:
            if key in self._items or arr.nbytes > self.limit:
                return
            self._items[key] = arr
            self.size += arr.nbytes
            while self.size > self.limit:
                _, old = self._items.popitem(last=False)
                self.size -= old.nbytes


# ---------------------------------------------------------------------------------------------
# plain images (PNG, JPEG, BMP)


class PlainBackend(Backend):
    """PNG/JPEG/BMP cannot be decoded partially with OpenCV: decoded once on first read, and
    refused when the decoded image would exceed `max_decode_bytes()`."""

    name = "plain"

    def __init__(self, path: Path):
        from PIL import Image

        self.path = path
        try:
            with Image.open(path) as img:
                width, height = img.size
                dpi = img.info.get("dpi")
        except Image.DecompressionBombError:
            width = height = None
        except Exception as exc:
            raise HoverNetError(f"{path}: cannot decode the image ({exc})") from exc
        limit = max_decode_bytes()
        if width is None or width * height * 3 > limit:
            size = f"{width} x {height} px " if width else ""
            raise HoverNetError(
                f"{path}: this {size}image is too large to decode whole (limit "
                f"{limit / 1024**3:.1f} GiB, HOVERNET_MAX_DECODE_MB) and PNG/JPEG/BMP cannot be "
                f"read region by region; {CONVERT_HINT}"
            )
        self.levels = [(int(width), int(height))]
        if dpi and _float(dpi[0]):
            raw = 25400.0 / float(dpi[0])
            self.mpp = _plausible_mpp(raw)
            self.mpp_source = "image dpi"
            if self.mpp is None:
                self.mpp_note = f"its {float(dpi[0]):g} dpi is a screen/print resolution"
        self._arr: np.ndarray | None = None
        self._lock = threading.Lock()

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        with self._lock:
            if self._arr is None:
                bgr = _read_plain_bgr(self.path)
                if bgr.shape[2] == 4:
                    bgra = bgr
                    bgr = _composite(bgra[:, :, [2, 1, 0, 3]], premultiplied=False)[:, :, ::-1]
                self._arr = np.ascontiguousarray(bgr[:, :, :3])
            arr = self._arr
        return np.ascontiguousarray(arr[y : y + h, x : x + w, ::-1])

    def close(self) -> None:
        self._arr = None
