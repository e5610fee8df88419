"""Reading RGB images: plain images (PNG, JPEG, BMP), TIFF (pyramidal or not) and slides.

`read_rgb(path)` returns the whole full-resolution image of an H&E input as H x W x 3 uint8
RGB; a greyscale image (or one with practically no colour,
`hovernet.io.input_checks.colour_problem`) is a HoverNetError. `read_mask_image(path)` returns
a mask's pixels as stored (grey, bool, palette expanded to RGB, RGBA). Large slides are better
read region by region through a slide reader (see the rest of this module); those readers take
grey as three equal channels and do not judge colour.

Plain images are decoded by their content (a PNG named .jpg reads); a file whose content is
another format than its extension says (a JPEG renamed .svs) is refused naming its real format
(`hovernet.io.input_checks.format_mismatch`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.io import tiff_checks
from hovernet.io.input_checks import (
    PLAIN,
    format_mismatch,
    jpeg_intact,
    png_intact,
    refuse_colourless,
    sniff_format,
)

PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
# formats only OpenSlide reads
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif"}
IMAGE_SUFFIXES = PLAIN_SUFFIXES | TIFF_SUFFIXES | SLIDE_SUFFIXES


def _note(message: str) -> None:
    """Tell the user about a conversion (printed once per image as `warning: ...`)."""
    warnings.warn(HoverNetWarning(message), stacklevel=3)


def _grey_or_alpha(arr: np.ndarray, path: Path) -> np.ndarray:
    """Grey -> 3 equal channels (`read_rgb` then refuses it), RGBA/BGRA with real transparency
    -> composited on white (channel order kept, with a note), opaque alpha dropped."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        alpha = arr[:, :, 3]
        if alpha.min() < 255:
            _note(f"{path}: RGBA image with transparent pixels, composited on white")
            a = alpha[:, :, None].astype(np.float32) / 255
            rgb = arr[:, :, :3].astype(np.float32) * a + 255 * (1 - a)
            return np.rint(rgb).astype(np.uint8)
    return arr


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Grey -> RGB, RGBA -> RGB (transparency composited on white); not uint8 is refused."""
    if arr.dtype != np.uint8:
        raise HoverNetError(
            f"{path}: pixels are {arr.dtype}, expected 8-bit RGB; convert the image to 8-bit first"
        )
    arr = _grey_or_alpha(arr, path)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise HoverNetError(f"{path}: expected an RGB image, got an array of shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def _read_plain(path: Path) -> np.ndarray:
    return _to_rgb_uint8(_read_plain_bgr(path)[:, :, 2::-1], path)  # BGR(A) -> RGB


def _read_tiff(path: Path) -> np.ndarray:
    tif, levels = tiff_checks.open_tiff(path, "image")  # refuses files cut short
    with tif:
        try:
            arr = tif.series[0].levels[0].asarray()
        except MemoryError:
            raise
        except Exception as exc:  # tifffile and imagecodecs raise many types
            part = tiff_checks.page_label(levels[0], 0)
            raise tiff_checks.decode_error(path, part, exc, "image") from exc
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    return _to_rgb_uint8(arr, path)


def _open_openslide(path: Path):
    import openslide

    if tiff_checks.is_tiff(path):  # SVS, NDPI, ...: refuse a file cut short before OpenSlide
        try:
            tiff_checks.verify_tiff(path, "image")
        except tiff_checks.TiffParseError:
            pass  # OpenSlide says whether it can read it
    try:
        return openslide.OpenSlide(str(path))
    except Exception as exc:
        raise HoverNetError(f"{path}: OpenSlide cannot open this slide ({exc})") from exc


def _openslide_region(path: Path, slide, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Level-0 RGBA from OpenSlide; its read errors (a corrupt tile) are a HoverNetError."""
    import openslide

    size = slide.dimensions  # not afterwards: after an error every call fails
    try:
        return np.asarray(slide.read_region((x, y), 0, (w, h)))
    except openslide.OpenSlideError as exc:
        part = tiff_checks.region_label(x, y, w, h, 0, size)
        raise tiff_checks.decode_error(path, part, exc, "image") from exc


def _read_openslide(path: Path) -> np.ndarray:
    with _open_openslide(path) as slide:
        width, height = slide.dimensions
        rgba = _openslide_region(path, slide, 0, 0, width, height)
    return _composite_on_white(rgba)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide gives premultiplied RGBA, alpha 0 outside the scanned area: paint it white."""
    rgb = rgba[:, :, :3].copy()
    rgb[rgba[:, :, 3] == 0] = 255
    return rgb


def _checked_suffix(path: Path) -> str:
    """The lower-case suffix of an existing image file of a supported type. A TIFF or slide
    whose content is another format (a JPEG renamed .svs) is refused naming that format."""
    if not path.is_file():
        raise HoverNetError(f"{path}: no such file")
    tiff_checks.check_not_empty(path, "image")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise HoverNetError(
            f"{path}: unsupported image type {suffix!r}; use one of "
            + ", ".join(sorted(IMAGE_SUFFIXES))
        )
    if suffix not in PLAIN_SUFFIXES:  # plain images are decoded by their content
        mismatch = format_mismatch(path)
        if mismatch is not None:
            raise HoverNetError(f"{path}: {mismatch}")
    return suffix


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of a PNG/JPEG/TIFF from its header, without decoding the pixels; None
    when the header cannot be read (reading the image then says why)."""
    path = Path(path)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
        return height, width
    except Exception:
        return None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The whole H&E image at full resolution as H x W x 3 uint8 RGB, or a HoverNetError (also
    for a greyscale image or one with practically no colour: see `colour_problem`)."""
    path = Path(path)
    suffix = _checked_suffix(path)
    if suffix in PLAIN_SUFFIXES:
        rgb = _read_plain(path)
    elif suffix in TIFF_SUFFIXES:
        rgb = _read_tiff(path)
    else:
        rgb = _read_openslide(path)
    refuse_colourless(path, rgb)
    return rgb


def read_mask_image(path: str | os.PathLike) -> np.ndarray:
    """A mask image's pixels as stored, without conversion or notes: H x W (grey, bool, 16-bit)
    or H x W x 3|4 (RGB, RGBA; a palette PNG comes expanded to RGB). For masks, not H&E."""
    path = Path(path)
    suffix = _checked_suffix(path)
    if suffix in PLAIN_SUFFIXES:
        arr = _decode_plain(path)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):  # BGR(A) -> RGB(A)
            arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
        return arr
    if suffix in TIFF_SUFFIXES:
        tif, levels = tiff_checks.open_tiff(path, "mask")
        with tif:
            try:
                arr = tif.series[0].levels[0].asarray()
            except Exception as exc:  # tifffile and imagecodecs raise many types
                raise tiff_checks.decode_error(path, "the mask", exc, "mask") from exc
        if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
            arr = np.moveaxis(arr, 0, -1)  # planar configuration
        return arr
    return _read_openslide(path)


# ---------------------------------------------------------------------------------------------
# Region reading for big images: `open_image(path)` returns a reader whose `read_region` decodes
# only what the region needs (OpenSlide tiles, TIFF tiles/strips). PNG/JPEG cannot be decoded
# partially with OpenCV, so those are decoded once and held (3 bytes per pixel).


class ImageReader:
    """An open image: `.width`, `.height`, `.mpp` (microns per pixel or None), `.path`.

    `read_region(x, y, w, h)` returns h x w x 3 uint8 RGB of the full-resolution level; the
    region must lie inside the image. Use as a context manager or call `close()`.
    """

    path: Path
    width: int
    height: int
    mpp: float | None = None

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_region(self, x: int, y: int, w: int, h: int) -> None:
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
            raise ValueError(
                f"{self.path}: region x={x} y={y} w={w} h={h} is outside the "
                f"{self.width} x {self.height} image"
            )


class _ArrayReader(ImageReader):
    """A fully decoded image (PNG, JPEG, BMP, or a TIFF layout the tile reader cannot do)."""

    def __init__(self, path: Path, arr: np.ndarray, bgr: bool = False, mpp: float | None = None):
        self.path, self._arr, self._bgr, self.mpp = path, arr, bgr, mpp
        self.height, self.width = arr.shape[:2]

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        self._check_region(x, y, w, h)
        region = self._arr[y : y + h, x : x + w, :3]
        if self._bgr:
            region = region[:, :, ::-1]
        return np.ascontiguousarray(region)

    def close(self) -> None:
        self._arr = None


class _TiffReader(ImageReader):
    """Level 0 of a TIFF, decoding only the tiles or strips a region touches (tifffile)."""

    def __init__(self, path: Path, tif, page, mpp: float | None):
        self.path, self._tif, self._page, self.mpp = path, tif, page, mpp
        self.height, self.width = page.shape[:2]
        chunk = page.chunks  # (rows, cols, samples) of one tile or strip
        self._ch, self._cw = chunk[0], chunk[1]
        self._per_row = -(-self.width // self._cw)

    def _segment(self, index: int) -> np.ndarray:
        page = self._page
        nbytes = int(page.databytecounts[index])
        if not nbytes:  # a tile deliberately left empty (sparse TIFF): white
            return np.full((self._ch, self._cw, 1), 255, np.uint8)
        fh = self._tif.filehandle
        fh.seek(page.dataoffsets[index])
        data = fh.read(nbytes)
        if len(data) < nbytes:  # the file shrank after it was opened
            part = tiff_checks.chunk_label(page, index, 0)
            raise tiff_checks.short_read(self.path, part, len(data), nbytes, "image")
        try:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            return seg.reshape(seg.shape[-3:])  # rows x cols x samples
        except MemoryError:
            raise
        except Exception as exc:  # imagecodecs raises its own types
            part = tiff_checks.chunk_label(page, index, 0)
            raise tiff_checks.decode_error(self.path, part, exc, "image") from exc

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        self._check_region(x, y, w, h)
        # grey segments (one sample) are broadcast to the three channels
        grid = (self._ch, self._cw, self._per_row)
        return assemble_chunks((x, y, w, h), grid, self._segment, 3)

    def close(self) -> None:
        self._tif.close()


class _OpenSlideReader(ImageReader):
    def __init__(self, path: Path, slide):
        self.path, self._slide = path, slide
        self.width, self.height = slide.dimensions
        mpp = slide.properties.get("openslide.mpp-x")
        self.mpp = float(mpp) if mpp else None

    def read_region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        self._check_region(x, y, w, h)
        return _composite_on_white(_openslide_region(self.path, self._slide, x, y, w, h))

    def close(self) -> None:
        self._slide.close()


def assemble_chunks(
    box: tuple[int, int, int, int],
    grid: tuple[int, int, int],
    chunk: Callable[[int], np.ndarray],
    channels: int,
) -> np.ndarray:
    """The (h, w, channels) uint8 region `box` = (x, y, w, h) of an image stored in chunks (TIFF
    strips or tiles): `grid` = (chunk rows, chunk columns, chunks per row), `chunk(index)`
    decodes chunk `index` (row-major) to rows x cols x samples. A one-sample chunk fills every
    channel; extra samples are dropped. The region must lie inside the image."""
    x, y, w, h = box
    ch, cw, per_row = grid
    out = np.empty((h, w, channels), np.uint8)
    for ty in range(y // ch, (y + h - 1) // ch + 1):
        for tx in range(x // cw, (x + w - 1) // cw + 1):
            seg = chunk(ty * per_row + tx)
            y0, x0 = ty * ch, tx * cw
            sy0, sy1 = max(y, y0), min(y + h, y0 + seg.shape[0])
            sx0, sx1 = max(x, x0), min(x + w, x0 + seg.shape[1])
            part = seg[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
            take = 1 if part.shape[2] == 1 else channels
            out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = part[:, :, :take]
    return out


def _tiff_mpp(page) -> float | None:
    """Microns per pixel from the TIFF resolution tags (centimetre or inch units)."""
    res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None
    num, den = res.value
    if not num or not den:
        return None
    per_unit = num / den
    microns = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
    return microns / per_unit if microns else None


def _open_tiff(path: Path) -> ImageReader:
    tif, levels = tiff_checks.open_tiff(path, "image")  # refuses files cut short
    page = levels[0]
    shape = page.shape
    simple = (
        page.dtype == np.uint8
        and page.planarconfig == 1
        and len(shape) in (2, 3)
        and (len(shape) == 2 or shape[2] in (3, 4))
        and len(page.dataoffsets) > 1
        and page.chunks[0] * page.chunks[1] * len(page.dataoffsets) >= shape[0] * shape[1]
    )
    if simple:
        return _TiffReader(path, tif, page, _tiff_mpp(page))
    # uncommon layouts (planar, one segment, not 8-bit): decode once through read_rgb
    mpp = _tiff_mpp(page)
    tif.close()
    return _ArrayReader(path, _read_tiff(path), mpp=mpp)


def open_image(path: str | os.PathLike) -> ImageReader:
    """Open an image for region reading; errors name the file (see `read_rgb`)."""
    path = Path(path)
    suffix = _checked_suffix(path)
    if suffix in PLAIN_SUFFIXES:
        return _ArrayReader(path, _read_plain_bgr(path), bgr=True)
    if suffix in TIFF_SUFFIXES:
        return _open_tiff(path)
    return _OpenSlideReader(path, _open_openslide(path))


def _read_plain_bgr(path: Path) -> np.ndarray:
    """Decode a PNG/JPEG keeping OpenCV's BGR(A) order (no second full-size copy for RGB)."""
    img = _decode_plain(path)
    if img.dtype != np.uint8:
        raise HoverNetError(
            f"{path}: pixels are {img.dtype}, expected 8-bit RGB; convert the image to 8-bit first"
        )
    return _grey_or_alpha(img, path)


def _decode_plain(path: Path) -> np.ndarray:
    """A PNG, JPEG or BMP decoded as stored (BGR(A) or grey, any depth); the content decides
    which, whatever the extension. Damaged files and other formats are a HoverNetError."""
    import cv2

    buf = np.fromfile(path, dtype=np.uint8)
    if buf.size == 0:
        raise HoverNetError(f"{path}: the file is empty (0 bytes); {tiff_checks.fix_hint('image')}")
    found = sniff_format(buf[:512].tobytes())
    if found == "JPEG" and not jpeg_intact(buf.tobytes()):
        raise HoverNetError(
            f"{path}: cannot decode the image: the JPEG is cut short (no end-of-image "
            f"marker); the file is damaged or incomplete: {tiff_checks.fix_hint('image')}"
        )
    intact = found in PLAIN and (found != "PNG" or png_intact(buf))
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if intact else None
    del buf
    if img is None:
        mismatch = None if found in PLAIN else format_mismatch(path)
        if mismatch is not None:
            raise HoverNetError(f"{path}: cannot decode the image: {mismatch}")
        raise HoverNetError(
            f"{path}: cannot decode the image (corrupt or not an image file); if it is a copy, "
            f"{tiff_checks.fix_hint('image')}"
        )
    return img
