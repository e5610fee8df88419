"""The tifffile slide backend: OME-TIFF, sub-IFD pyramids, stripped TIFF, pyramids OpenSlide
does not see, and TIFF-based slides OpenSlide cannot open.

Every level is read region by region (memory-mapped, by the tiles/strips a region touches, or
decoded whole once when small). Files are checked on open and tiles on decoding
(`hovernet.io.tiff_checks`): damaged data is a HoverNetError, never white or black pixels.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io import tiff_checks
from hovernet.io.slides import assemble_chunks
from hovernet.io.wsi_backends import (
    _LRU,
    CONVERT_HINT,
    Backend,
    _composite,
    _float,
    _plausible_mpp,
    max_decode_bytes,
)

# decoded TIFF strips kept for the next regions of the same rows (stripped TIFFs only)
STRIP_CACHE_BYTES = 384 * 1024**2


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
        if not nbytes:  # a tile deliberately left empty (sparse TIFF): white
            return np.full((self._ch, self._cw, self._spp), 255, np.uint8)
        data = os.pread(self._fd, nbytes, int(self._offsets[index]))
        if len(data) < nbytes:  # the file shrank after it was opened
            part = tiff_checks.chunk_label(self._page, index, self._level)
            raise tiff_checks.short_read(self.path, part, len(data), nbytes)
        try:
            seg, _, _ = self._decode(data, index, jpegtables=self._jpegtables)
            seg = seg.reshape(seg.shape[-3:])
        except MemoryError:
            raise
        except Exception as exc:  # imagecodecs raises its own types
            part = tiff_checks.chunk_label(self._page, index, self._level)
            raise tiff_checks.decode_error(self.path, part, exc) from exc
        if self._cache_segments:
            self._cache.put(key, seg)
        return seg

    def _read_whole(self) -> np.ndarray:
        with self._lock:
            if self._whole is None:
                try:
                    arr = self._page.asarray()
                except MemoryError:
                    raise
                except Exception as exc:
                    part = tiff_checks.page_label(self._page, self._level)
                    raise tiff_checks.decode_error(self.path, part, exc) from exc
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
        out = assemble_chunks((x, y, w, h), grid, self._segment, self._spp)
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


def tiff_levels(tif) -> list:
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

    def __init__(self, path: Path, opened: tuple | None = None):
        """`opened`: (TiffFile, level pages) from `tiff_checks.open_tiff` (which checks the
        file's structure); opened and checked here when not given."""
        self._tif, pages = opened or tiff_checks.open_tiff(path, "slide", tiff_levels)
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


def prefers_tifffile(tif) -> bool:
    """OME-TIFF, sub-IFD pyramids and stripped TIFF: read with tifffile, not OpenSlide."""
    first = tif.pages[0]
    return bool(tif.is_ome or first.subifds or not first.is_tiled)
