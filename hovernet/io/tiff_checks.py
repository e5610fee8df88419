"""Checks that make damaged image files fail loudly instead of reading as white or black.

At open, cheaply, from the file's structure: an empty file, a TIFF (or SVS, NDPI, ... built on
TIFF) whose chain of image directories stops early, or whose tiles/strips lie past the end of
the file (a copy cut short). At read time, a tile or strip that cannot be decoded (a corrupt
JPEG or JPEG 2000 tile) and OpenSlide's read errors. Each becomes one HoverNetError naming the
file, what could not be read and what to do.

Not detectable here: damage inside one compressed tile that its decoder accepts (JPEG and
JPEG 2000 carry no checksums; libjpeg reports such damage only as a warning, which OpenSlide
treats as an error but imagecodecs does not).
"""

from __future__ import annotations

import logging
import struct
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# pages besides the pyramid levels whose tile offsets are checked at open (labels, macros,
# thumbnails, further channels); files with more pages have the rest checked only when read
MAX_EXTRA_PAGES = 64
# messages tifffile logs when it stops reading the chain of image directories
_CHAIN_MESSAGES = ("invalid page offset", "invalid offset to", "corrupted tag list")


def fix_hint(what: str = "slide") -> str:
    return f"re-copy or re-export the {what}"


def damaged(path: Path, detail: str, what: str = "slide") -> HoverNetError:
    """The error for a file whose data cannot be read: names the file, the part, the fix."""
    return HoverNetError(f"{path}: {detail}; the file is damaged or incomplete: {fix_hint(what)}")


def check_not_empty(path: Path, what: str = "slide") -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise HoverNetError(f"{path}: cannot read the file ({exc})") from exc
    if size == 0:
        raise HoverNetError(f"{path}: the file is empty (0 bytes); {fix_hint(what)}")


def is_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in TIFF_MAGIC


def decode_error(path: Path, part: str, exc: BaseException, what: str = "slide") -> HoverNetError:
    """A tile, strip or region that the decoder (or OpenSlide) refused."""
    reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return damaged(path, f"cannot decode {part} ({reason})", what)


def short_read(path: Path, part: str, got: int, wanted: int, what: str = "slide") -> HoverNetError:
    """Fewer bytes than the file's directory promises (the file shrank after it was opened)."""
    return damaged(path, f"{part}: read {got} of its {wanted} bytes", what)


def page_label(page, level: int | None = None) -> str:
    """'pyramid level 1 (1024 x 1792 px)' or 'image 3 (387 x 463 px)' for error messages."""
    size = f"{int(page.imagewidth)} x {int(page.imagelength)} px"
    if level is not None:
        return f"pyramid level {level} ({size})"
    index = page.index if isinstance(page.index, int) else page.index[0]
    return f"image {index} ({size})"


def region_label(x: int, y: int, w: int, h: int, level: int, size: tuple[int, int]) -> str:
    """'the 512 x 512 px region at x=0, y=256 of pyramid level 0 (2220 x 2967 px)'."""
    return (
        f"the {w} x {h} px region at x={x}, y={y} of pyramid level {level} "
        f"({size[0]} x {size[1]} px)"
    )


def chunk_label(page, index: int, level: int | None = None) -> str:
    kind = "tile" if page.is_tiled else "strip"
    return f"{kind} {index} of {page_label(page, level)}"


# ---------------------------------------------------------------------------------------------
# tifffile's own messages about a broken directory chain (logged, never raised): kept out of the
# user's terminal while a file is opened here, and turned into the error


class _Capture(logging.Filter):
    """Swallows tifffile's log records in threads that are opening a file through `_captured`
    (their messages go into the error) and lets the rest through."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        sink = getattr(self.local, "sink", None)
        if sink is None:
            return True
        sink.append(record.getMessage())
        return False


_CAPTURE = _Capture()
_CAPTURE_LOCK = threading.Lock()


@contextmanager
def _captured():
    with _CAPTURE_LOCK:
        tifflog = logging.getLogger("tifffile")
        if _CAPTURE not in tifflog.filters:
            tifflog.addFilter(_CAPTURE)
    sink: list[str] = []
    outer = getattr(_CAPTURE.local, "sink", None)
    _CAPTURE.local.sink = sink
    try:
        yield sink
    finally:
        _CAPTURE.local.sink = outer


# ---------------------------------------------------------------------------------------------


class TiffParseError(HoverNetError):
    """tifffile cannot parse the file at all (it may still be a format OpenSlide reads)."""


def open_tiff(path: Path, what: str = "slide", levels_of=None):
    """Open `path` with tifffile and check its structure, cheaply (directories only).

    Refused: a chain of image directories that stops early, tiles/strips of the pyramid
    `levels` or of up to MAX_EXTRA_PAGES other pages that lie past the end of the file.

    Returns `(tif, levels)`, `levels` being `levels_of(tif)` (default: the first series'
    pyramid) as a list of pages, level 0 first. A damaged file is a HoverNetError naming the
    file and the part; one that tifffile cannot parse at all a TiffParseError.
    """
    import tifffile

    check_not_empty(path, what)
    with _captured() as messages:
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # tifffile raises many types for broken files
            raise _parse_error(path, exc, what) from exc
        try:
            size = int(tif.filehandle.size)
            _check_chain(tif, path, size, what, messages)
            try:
                levels = (
                    levels_of(tif) if levels_of else [lv.keyframe for lv in tif.series[0].levels]
                )
            except Exception as exc:
                raise _parse_error(path, exc, what) from exc
            _check_pages(tif, path, size, levels, what)
        except BaseException:
            tif.close()
            raise
    return tif, levels


def _parse_error(path: Path, exc: BaseException, what: str) -> TiffParseError:
    return TiffParseError(
        f"{path}: cannot read the TIFF ({exc}); if the file is a copy, {fix_hint(what)}"
    )


def verify_tiff(path: Path, what: str = "slide", levels_of=None) -> None:
    """`open_tiff` and close again: for files that another library (OpenSlide) will read."""
    tif, _ = open_tiff(path, what, levels_of)
    tif.close()


def _check_pages(tif, path: Path, size: int, levels: list, what: str) -> None:
    """Every tile/strip of the pyramid `levels` (named so in messages), and of the other pages
    up to MAX_EXTRA_PAGES, lies inside the file. Reads the directories, not the pixels."""
    seen = set()
    for i, page in enumerate(levels):
        seen.add(page.offset)
        _check_chunks(page, i, path, size, what)
    extra = 0
    for index in range(len(tif.pages)):
        page = tif.pages[index]
        if page.offset in seen or not hasattr(page, "imagewidth"):
            continue
        extra += 1
        if extra > MAX_EXTRA_PAGES:
            break
        _check_chunks(page, None, path, size, what)


def _next_offset(tif, offset: int) -> int | None:
    """The next-directory offset stored after the directory at `offset` (None: cut off)."""
    t, fh = tif.tiff, tif.filehandle
    fh.seek(offset)
    raw = fh.read(t.tagnosize)
    if len(raw) < t.tagnosize:
        return None
    tagno = struct.unpack(t.tagnoformat, raw)[0]
    fh.seek(offset + t.tagnosize + tagno * t.tagsize)
    raw = fh.read(t.offsetsize)
    return struct.unpack(t.offsetformat, raw)[0] if len(raw) == t.offsetsize else None


def _check_chain(tif, path: Path, size: int, what: str, messages) -> None:
    """The last directory tifffile could read must end the chain (next offset 0)."""
    n = len(tif.pages)  # walks the whole chain (tag counts and next offsets only)
    broken = [m.split("> ", 1)[-1] for m in messages if any(k in m for k in _CHAIN_MESSAGES)]
    if n == 0:
        note = f"{broken[0]}; " if broken else ""
        detail = f"cannot read the TIFF: no image directory found ({note}the file has {size} bytes)"
        raise damaged(path, detail, what)
    nxt = _next_offset(tif, tif.pages[n - 1].offset)
    if nxt == 0 and not broken:
        return
    if nxt is None:
        where = f"the directory of image {n - 1} is cut off at the end of the {size}-byte file"
    elif nxt >= size:
        where = (
            f"the directory of image {n} should be at byte {nxt}, past the end of the "
            f"{size}-byte file"
        )
    elif nxt:
        where = f"the directory of image {n} at byte {nxt} is unreadable"
    else:
        where = f"an image directory is unreadable ({broken[0]})"
    raise damaged(path, where, what)


def _check_chunks(page, level: int | None, path: Path, size: int, what: str) -> None:
    """Every tile/strip of `page` (pyramid level `level`, or another image) inside the file."""
    offsets = np.asarray(page.dataoffsets, np.int64).ravel()
    counts = np.asarray(page.databytecounts, np.int64).ravel()
    if offsets.size == 0 or offsets.size != counts.size:
        if level is not None:
            detail = f"{page_label(page, level)} has no readable record of where its pixels are"
            raise damaged(path, detail, what)
        return
    # a byte count of 0 is a deliberately empty ("sparse") tile, read as blank
    bad = (counts > 0) & ((offsets + counts > size) | (offsets < 8))
    if not bad.any():
        return
    i = int(np.argmax(bad))
    n_bad = int(bad.sum())
    others = f" (and {n_bad - 1} more)" if n_bad > 1 else ""
    start, stop = int(offsets[i]), int(offsets[i] + counts[i])
    if start < 8:
        where = f"points into the file header (byte {start})"
    else:
        where = f"should lie at bytes {start}-{stop}, but the file has only {size} bytes"
    raise damaged(path, f"{chunk_label(page, i, level)}{others} {where}", what)
