"""Reading RGB images: plain images (PNG, JPEG, BMP), TIFF (pyramidal or not) and slides.

`read_rgb(path)` returns the whole full-resolution image as H x W x 3 uint8 RGB. Large slides
are better read region by region through a slide reader (see the rest of this module).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError

PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff"}
# formats only OpenSlide reads
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".svslide", ".bif"}
IMAGE_SUFFIXES = PLAIN_SUFFIXES | TIFF_SUFFIXES | SLIDE_SUFFIXES


def _to_rgb_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Grey -> RGB, RGBA -> RGB (alpha dropped); anything not uint8 is refused."""
    if arr.dtype != np.uint8:
        raise HoverNetError(
            f"{path}: pixels are {arr.dtype}, expected 8-bit RGB; convert the image to 8-bit first"
        )
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise HoverNetError(f"{path}: expected an RGB image, got an array of shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def _read_plain(path: Path) -> np.ndarray:
    import cv2

    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise HoverNetError(f"{path}: cannot decode the image (corrupt or not an image file)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return _to_rgb_uint8(img, path)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            arr = tif.series[0].levels[0].asarray()
    except Exception as exc:  # tifffile raises many types for broken files
        raise HoverNetError(f"{path}: cannot read the TIFF ({exc})") from exc
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    return _to_rgb_uint8(arr, path)


def _read_openslide(path: Path) -> np.ndarray:
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except Exception as exc:
        raise HoverNetError(f"{path}: OpenSlide cannot open this slide ({exc})") from exc
    with slide:
        width, height = slide.dimensions
        rgba = np.asarray(slide.read_region((0, 0), 0, (width, height)))
    return _composite_on_white(rgba)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns premultiplied RGBA with alpha 0 outside the scanned area: paint it white."""
    rgb = rgba[:, :, :3].copy()
    rgb[rgba[:, :, 3] == 0] = 255
    return rgb


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The whole image at full resolution as H x W x 3 uint8 RGB, or a HoverNetError."""
    path = Path(path)
    if not path.is_file():
        raise HoverNetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in PLAIN_SUFFIXES:
        return _read_plain(path)
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    if suffix in SLIDE_SUFFIXES:
        return _read_openslide(path)
    raise HoverNetError(
        f"{path}: unsupported image type {suffix!r}; use one of "
        + ", ".join(sorted(IMAGE_SUFFIXES))
    )
