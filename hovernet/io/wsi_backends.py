"""Slide backends behind `hovernet.io.wsi.Slide`: OpenSlide, tifffile and plain images.

A backend has `levels` ((width, height) per pyramid level, level 0 first), `mpp` and
`magnification` from the file (or None), and `read_level(level, x, y, w, h)`, which returns
RGB uint8 (h, w, 3) for a box inside that level. `read_level` is thread-safe.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.slides import (
    PLAIN_SUFFIXES,
    SLIDE_SUFFIXES,
    TIFF_SUFFIXES,
    _read_plain_bgr,
    assemble_chunks,
)

# images that can only be decoded whole (PNG, JPEG, TIFF stored as one compressed block) are
# refused above this decoded size (bytes); override with HOVERNET_MAX_DECODE_MB
DEFAULT_MAX_DECODE_BYTES = 2 * 1024**3
# decoded TIFF strips kept for the next regions of the same rows (stripped TIFFs only)
STRIP_CACHE_BYTES = 384 * 1024**2
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
        self.path, self._osr = path, osr
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
        rgba = np.asarray(self._osr.read_region(location, level, (w, h)))
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


class _TiffLevel:
    """One TIFF page read region by region: memory-mapped (uncompressed, contiguous), by the
    tiles/strips a region touches, or decoded whole once (small pages only)."""

    def __init__(self, path: Path, page, fd: int, cache: _LRU, level: int):
        self.path, self._fd, self._cache, self._level = path, fd, cache, level
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self._spp = int(page.samplesperpixel)
        self._alpha_premultiplied = 1 in tuple(
            np.atleast_1d(page.extrasamples) if page.extrasamples is not None else ()
        )
        self._lock = threading.Lock()
        self._whole: np.ndarray | None = None
        self._memmap = None
        self._page = page
        if page.compression == 1 and page.planarconfig == 1 and _contiguous(page):
            offset = int(page.dataoffsets[0])
            nbytes = int(np.sum(np.asarray(page.databytecounts, np.int64)))
            if nbytes == self.width * self.height * self._spp:
                self._memmap = np.memmap(
                    path, np.uint8, "r", offset, (self.height, self.width, self._spp)
                )
                return
        chunks = page.chunks  # (rows, cols[, samples]) of one tile or strip
        n = len(page.dataoffsets)
        self._ch, self._cw = int(chunks[0]), int(chunks[1]) if page.is_tiled else self.width
        self._per_row = -(-self.width // self._cw)
        per_col = -(-self.height // self._ch)
        self._chunked = page.planarconfig == 1 and n == self._per_row * per_col and n > 1
        if self._chunked:
            # touch lazily loaded tag values now, while only one thread uses the file
            self._offsets = np.asarray(page.dataoffsets, np.int64)
            self._counts = np.asarray(page.databytecounts, np.int64)
            self._decode = page.decode
            self._jpegtables = page.jpegtables
            self._cache_segments = not page.is_tiled
            if self._ch * self._cw * self._spp > max_decode_bytes():
                self._chunked = False
        if not self._chunked:
            nbytes = self.width * self.height * 3
            if nbytes > max_decode_bytes():
                raise HoverNetError(
                    f"{path}: pyramid level {level} ({self.width} x {self.height} px) is stored "
                    "in a way that can only be decoded whole, which would take "
                    f"{nbytes / 1024**3:.1f} GiB; {CONVERT_HINT}"
                )

    def _segment(self, index: int) -> np.ndarray:
        key = (self._level, index)
        if self._cache_segments:
            seg = self._cache.get(key)
            if seg is not None:
                return seg
        nbytes = int(self._counts[index])
        data = os.pread(self._fd, nbytes, int(self._offsets[index])) if nbytes else b""
        if not data:  # a missing (sparse) tile: white
            return np.full((self._ch, self._cw, self._spp), 255, np.uint8)
        seg, _, _ = self._decode(data, index, jpegtables=self._jpegtables)
        seg = seg.reshape(seg.shape[-3:])
        if self._cache_segments:
            self._cache.put(key, seg)
        return seg

    def _read_whole(self) -> np.ndarray:
        with self._lock:
            if self._whole is None:
                arr = self._page.asarray()
                if self._page.planarconfig == 2 and arr.ndim == 3:
                    arr = np.moveaxis(arr, 0, -1)
                self._whole = _composite(
                    arr.reshape(self.height, self.width, -1), self._alpha_premultiplied
                )
            return self._whole

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._memmap is not None:
            return _composite(
                np.array(self._memmap[y : y + h, x : x + w]), self._alpha_premultiplied
            )
        if not self._chunked:
            return np.ascontiguousarray(self._read_whole()[y : y + h, x : x + w])
        grid = (self._ch, self._cw, self._per_row)
        out = assemble_chunks(x, y, w, h, grid, self._segment, self._spp)
        return _composite(out, self._alpha_premultiplied)


def _contiguous(page) -> bool:
    """Whether the page's (uncompressed) data lie in one contiguous block of the file."""
    value = page.is_contiguous  # a bool in recent tifffile, (offset, bytecount) or None before
    return bool(value[0]) if isinstance(value, tuple) else bool(value)


def _ome_info(xml: str) -> tuple[float | None, float | None]:
    """(mpp, nominal magnification) of the first image of OME-XML metadata."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    mpp = mag = None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None:
            size = _float(el.get("PhysicalSizeX"))
            unit = el.get("PhysicalSizeXUnit", "µm")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}.get(unit)
            if size is not None and scale is not None:
                mpp = size * scale
        elif tag == "Objective" and mag is None:
            mag = _float(el.get("NominalMagnification"))
    return mpp, mag


def _resolution_mpp(page) -> float | None:
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value
    microns = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    if not num or not den or microns is None:
        return None
    return microns * den / num


def _page_dims(page) -> tuple[int, int, int]:
    return int(page.imagewidth), int(page.imagelength), int(page.samplesperpixel)


def _tiff_levels(tif) -> list:
    """Level pages of the first image: the series' own pyramid (sub-IFDs, OME, SVS, shaped),
    or, when tifffile sees only one level, further pages that are smaller copies of it."""
    series = tif.series[0]
    pages = [level.keyframe for level in series.levels]
    if len(pages) == 1:
        w0, h0, s0 = _page_dims(pages[0])
        extra = []
        for other in tif.series[1:]:
            if other.name.lower() in ("thumbnail", "label", "macro"):
                continue
            page = other.keyframe
            w, h, s = _page_dims(page)
            if s == s0 and w < w0 and h < h0 and abs(w0 / w - h0 / h) <= 0.02 * (w0 / w):
                extra.append(page)
        pages += sorted(extra, key=lambda p: -int(p.imagewidth))
    return pages


class TiffBackend(Backend):
    name = "tifffile"

    def __init__(self, path: Path):
        import tifffile

        try:
            self._tif = tifffile.TiffFile(path)
            pages = _tiff_levels(self._tif)
        except Exception as exc:  # tifffile raises many types for broken files
            raise HoverNetError(f"{path}: cannot read the TIFF ({exc})") from exc
        try:
            self._init(path, pages)
        except BaseException:
            self._tif.close()
            raise

    def _init(self, path: Path, pages: list) -> None:
        first = pages[0]
        if first.dtype != np.uint8:
            raise HoverNetError(
                f"{path}: pixels are {first.dtype}, expected 8-bit RGB; convert the image to 8-bit"
            )
        if first.samplesperpixel not in (1, 2, 3, 4):
            raise HoverNetError(
                f"{path}: {first.samplesperpixel} samples per pixel; expected grey, RGB or RGBA"
            )
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._cache = _LRU(STRIP_CACHE_BYTES)
        self._levels = [_TiffLevel(path, p, self._fd, self._cache, i) for i, p in enumerate(pages)]
        self.levels = [(lv.width, lv.height) for lv in self._levels]
        tif = self._tif
        mpp = mag = None
        if tif.is_ome and tif.ome_metadata:
            mpp, mag = _ome_info(tif.ome_metadata)
            self.mpp_source = "OME PhysicalSizeX"
        desc = first.description or ""
        if mpp is None and desc.startswith("Aperio"):
            found = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
            mpp = _float(found.group(1)) if found else None
            self.mpp_source = "Aperio MPP"
        if mag is None and desc.startswith("Aperio"):
            found = re.search(r"\|\s*AppMag\s*=\s*([0-9.eE+-]+)", desc)
            mag = _float(found.group(1)) if found else None
        if mpp is None:
            mpp = _resolution_mpp(first)
            self.mpp_source = "TIFF resolution tags"
        self.mpp = _plausible_mpp(mpp)
        if mpp is not None and self.mpp is None:
            self.mpp_note = f"its {self.mpp_source} say {mpp:g} um/px, not a microscope scan"
        self.magnification = mag

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._levels[level].read(x, y, w, h)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None
        self._levels = []
        self._tif.close()


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


# ---------------------------------------------------------------------------------------------


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _prefer_tifffile(path: Path) -> tuple[bool, int]:
    """(whether tifffile should read this TIFF, how many levels tifffile finds)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            first = tif.pages[0]
            n_levels = len(_tiff_levels(tif))
            special = tif.is_ome or bool(first.subifds) or not first.is_tiled
            return special, n_levels
    except Exception:
        return False, 0


def open_backend(path: Path, backend: str = "auto") -> Backend:
    if path.is_dir() or not path.exists():
        raise HoverNetError(f"{path}: no such file")
    if backend == "tifffile":
        return TiffBackend(path)
    if backend == "openslide":
        osr, error = _try_openslide(path)
        if osr is None:
            raise HoverNetError(f"{path}: OpenSlide cannot open this slide ({error})")
        return OpenSlideBackend(path, osr)
    if backend != "auto":
        raise ValueError(f"backend must be 'auto', 'openslide' or 'tifffile', not {backend!r}")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise HoverNetError(
            f"{path}: unsupported slide type {suffix!r}; use one of " + ", ".join(sorted(SUFFIXES))
        )
    if suffix in PLAIN_SUFFIXES:
        return PlainBackend(path)
    if suffix in TIFF_SUFFIXES:
        special, n_levels = _prefer_tifffile(path)
        if not special:
            osr, _ = _try_openslide(path)
            if osr is not None:
                if len(osr.level_dimensions) >= n_levels:
                    return OpenSlideBackend(path, osr)
                osr.close()
        return TiffBackend(path)
    osr, error = _try_openslide(path)
    if osr is not None:
        return OpenSlideBackend(path, osr)
    if _is_tiff(path):
        return TiffBackend(path)
    raise HoverNetError(f"{path}: OpenSlide cannot open this slide ({error})")
