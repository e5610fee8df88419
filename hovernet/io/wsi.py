"""Whole-slide images read region by region at any resolution, never a whole pyramid level.

`open_slide(path)` returns a `Slide`: `slide.read(x, y, w, h, mpp)` gives the RGB region whose
top-left pixel is (x, y) in the pixel grid of the slide resampled to `mpp` microns per pixel. It
reads only the part of the best pyramid level that the region needs (the coarsest level that is
not coarser than `mpp`) and resamples it: exact block averages when the factor is a whole number
(cv2.INTER_AREA), otherwise a block average by the whole part of the factor and bilinear
interpolation for the rest (down or up). Every output pixel is a fixed function of its position
in the resampled grid, so overlapping or adjacent regions agree and stitch without seams. Parts
outside the slide read as white; transparent pixels are composited on white.

Backends (`hovernet.io.wsi_backends`): OpenSlide (SVS, NDPI, MRXS, SCN, DICOM, tiled TIFF), tifffile
(`hovernet.io.wsi_tiff`: OME-TIFF, sub-IFD pyramids, stripped TIFF, pyramids OpenSlide does not
see) and plain images (PNG, JPEG, BMP; decoded once, refused above a size limit since they cannot
be read partially).

A file whose extension lies (a JPEG renamed .svs) is refused naming its real format.
Damaged files are never read as white (`hovernet.io.tiff_checks`): an empty file, or a TIFF-based
one whose image directories or tiles lie past its end (a copy cut short), is a HoverNetError when
opened; a tile that cannot be decoded, or an OpenSlide read error, is one when read. Each names
the file and the level, region or tile.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io import tiff_checks
from hovernet.io.input_checks import format_mismatch
from hovernet.io.slides import PLAIN_SUFFIXES, TIFF_SUFFIXES
from hovernet.io.wsi_backends import (
    SUFFIXES,
    Backend,
    OpenSlideBackend,
    PlainBackend,
    _try_openslide,
)
from hovernet.io.wsi_tiff import TiffBackend, prefers_tifffile, tiff_levels

# a pyramid level whose downsample exceeds the wanted one by at most this much is still used
# (pyramids such as 4443 -> 2221 px have downsample 2.0005, not 2)
LEVEL_TOLERANCE = 0.01
# reads whose source area exceeds this are split into smaller reads (same pixels, bounded memory)
READ_CHUNK_BYTES = 192 * 1024**2
MAG_TO_MPP = 10.0  # microns per pixel at 1x: 40x = 0.25, 20x = 0.5


def mpp_from_magnification(mag: float) -> float:
    """The usual conversion of an objective power to microns per pixel (40x = 0.25 um/px)."""
    return MAG_TO_MPP / mag


class _AxisPlan:
    """How one axis of an output region maps onto a pyramid level.

    The level is first reduced by `k` (an exact block mean on a grid aligned to level pixel 0),
    then sampled bilinearly at local coordinate `scale * i + offset` for `m` samples per output
    pixel (averaged; exact when the mapping is `1 * i + 0`). `src0`, `src_len` are the level
    pixels read (a multiple of `k`).
    """

    __slots__ = ("k", "m", "src0", "src_len", "scale", "offset")

    def __init__(self, start: int, length: int, factor: float):
        n = round(factor)
        if n >= 1 and abs(factor - n) <= 1e-9 * factor:  # whole-number factor: block mean only
            self.k, self.m, self.scale, self.offset = n, 1, 1.0, 0.0
            self.src0, self.src_len = start * n, length * n
            return
        k = max(1, math.floor(factor))
        r = factor / k
        first = (start + 0.5) * r - 0.5  # centre of output pixel `start` in reduced pixels
        last = (start + length - 0.5) * r - 0.5
        q0 = math.floor(first) - 1
        q1 = math.floor(last) + 3
        # shrinking by r in (1.25, 2): average 2 x 2 bilinear samples per output pixel (close
        # to an area filter); enlarging or shrinking a little: one bilinear sample
        m = 2 if r > 1.25 else 1
        self.k, self.m, self.scale = k, m, r / m
        self.offset = (start + 0.5 / m) * r - 0.5 - q0
        self.src0, self.src_len = q0 * k, (q1 - q0) * k

    @property
    def exact(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


class Slide:
    """An open slide (see the module docstring). Use as a context manager or call `close()`.

    Attributes: `path`, `dimensions` (level-0 width, height), `mpp` (level-0 microns per pixel),
    `magnification` (objective power or None), `mpp_source` (where `mpp` came from),
    `level_dimensions`, `level_downsamples` ((x, y) per level), `backend_name`.
    `read` is safe to call from several threads at once.
    """

    def __init__(
        self, path: Path, backend: Backend, mpp: float, magnification: float | None, source: str
    ):
        self.path = path
        self._backend = backend
        self.mpp = float(mpp)
        self.magnification = magnification
        self.mpp_source = source
        self.backend_name = backend.name
        self.level_dimensions: list[tuple[int, int]] = list(backend.levels)
        self.dimensions = self.level_dimensions[0]
        w0, h0 = self.dimensions
        self.level_downsamples = [(w0 / w, h0 / h) for w, h in self.level_dimensions]

    # -- geometry -------------------------------------------------------------------------------
    def _factor(self, mpp: float) -> float:
        if not (mpp > 0 and math.isfinite(mpp)):
            raise ValueError(f"mpp must be a positive number, got {mpp!r}")
        return mpp / self.mpp

    def size_at(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide resampled to `mpp` microns per pixel."""
        f = self._factor(mpp)
        w0, h0 = self.dimensions
        return max(1, round(w0 / f)), max(1, round(h0 / f))

    def best_level(self, mpp: float) -> int:
        """The coarsest pyramid level that is not coarser than `mpp` (within LEVEL_TOLERANCE)."""
        f = self._factor(mpp)
        best = 0
        for i, (dx, dy) in enumerate(self.level_downsamples):
            if max(dx, dy) <= f * (1 + LEVEL_TOLERANCE) and max(dx, dy) >= max(
                *self.level_downsamples[best]
            ):
                best = i
        return best

    # -- reading --------------------------------------------------------------------------------
    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the region at (x, y) in the pixel grid at `mpp` um/px."""
        x, y, w, h = int(x), int(y), int(w), int(h)
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.path}: region size must be positive, got {w} x {h}")
        f = self._factor(mpp)
        level = self.best_level(mpp)
        dx, dy = self.level_downsamples[level]
        return self._read_level_resampled(level, (x, y, w, h), f / dx, f / dy)

    def _read_level_resampled(
        self, level: int, box: tuple[int, int, int, int], fx: float, fy: float
    ) -> np.ndarray:
        x, y, w, h = box
        src_bytes = (w * max(fx, 1.0) + 4) * (h * max(fy, 1.0) + 4) * 3
        if src_bytes > READ_CHUNK_BYTES and (w > 1 or h > 1):
            # same pixels in pieces: every output pixel depends only on its own position
            out = np.empty((h, w, 3), np.uint8)
            if h >= w:
                half = h // 2
                out[:half] = self._read_level_resampled(level, (x, y, w, half), fx, fy)
                out[half:] = self._read_level_resampled(level, (x, y + half, w, h - half), fx, fy)
            else:
                half = w // 2
                out[:, :half] = self._read_level_resampled(level, (x, y, half, h), fx, fy)
                out[:, half:] = self._read_level_resampled(
                    level, (x + half, y, w - half, h), fx, fy
                )
            return out
        import cv2

        px, py = _AxisPlan(x, w, fx), _AxisPlan(y, h, fy)
        src = self._read_padded(level, px.src0, py.src0, px.src_len, py.src_len)
        if px.k > 1 or py.k > 1:
            size = (px.src_len // px.k, py.src_len // py.k)
            src = cv2.resize(src, size, interpolation=cv2.INTER_AREA)
        if px.exact and py.exact:
            return np.ascontiguousarray(src)
        matrix = np.array([[px.scale, 0.0, px.offset], [0.0, py.scale, py.offset]])
        out = cv2.warpAffine(
            src,
            matrix,
            (w * px.m, h * py.m),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        if px.m > 1 or py.m > 1:
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)
        return out

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB (h, w, 3) of pyramid level `level` at its own pixel coordinates, white outside."""
        return self._read_padded(level, int(x), int(y), int(w), int(h))

    def _read_padded(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x0 == x and y0 == y and x1 == x + w and y1 == y + h:
            return self._backend.read_level(level, x, y, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._backend.read_level(
                level, x0, y0, x1 - x0, y1 - y0
            )
        return out

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide with its longer side at most `max_side` px, and its mpp.

        Read from the coarsest suitable pyramid level in bounded pieces; never larger than
        level 0 (a slide smaller than `max_side` comes back at full resolution)."""
        w0, h0 = self.dimensions
        mpp = self.mpp * max(1.0, max(w0, h0) / max_side)
        w, h = self.size_at(mpp)
        if max(w, h) > max_side:  # rounding
            mpp *= max(w, h) / max_side
            w, h = self.size_at(mpp)
        return self.read(0, 0, w, h, mpp), mpp

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (
            f"Slide({str(self.path)!r}, {w} x {h} px, {self.mpp:g} um/px, "
            f"{len(self.level_dimensions)} level(s), {self.backend_name})"
        )


def _check_positive(value: float | None, what: str, path: Path) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise HoverNetError(f"{path}: {what} must be a positive number, got {value!r}")


def recorded_mpp(path: str | os.PathLike) -> float | None:
    """The resolution the file records (its MPP, else its objective power), None if neither."""
    backend = open_backend(Path(path))
    try:
        if backend.mpp is not None:
            return float(backend.mpp)
        if backend.magnification is not None:
            return mpp_from_magnification(backend.magnification)
        return None
    finally:
        backend.close()


def open_slide(
    path: str | os.PathLike,
    mpp: float | None = None,
    magnification: float | None = None,
    backend: str = "auto",
) -> Slide:
    """Open a slide for region reading.

    `mpp` / `magnification` override what the file says (a magnification alone gives
    mpp = 10 / magnification: 40x = 0.25 um/px). Without either, the file's MPP is used, or its
    objective power when it records no MPP; a file with neither is a HoverNetError that names
    the file and the options `--slide_mpp` / `--slide_mag`.

    `backend`: "auto" (OpenSlide for the formats it reads, tifffile for OME-TIFF, sub-IFD and
    stripped TIFFs and pyramids OpenSlide does not see, a decoder for PNG/JPEG), or "openslide"
    / "tifffile" to force one.

    A damaged file (empty, cut short, tiles past its end) is a HoverNetError here, whatever the
    backend; `Slide.read` raises one for a tile that cannot be decoded.
    """
    path = Path(path)
    _check_positive(mpp, "the slide MPP (--slide_mpp)", path)
    _check_positive(magnification, "the slide magnification (--slide_mag)", path)
    backend = open_backend(path, backend)
    try:
        mag = magnification if magnification is not None else backend.magnification
        if mpp is not None:
            use_mpp, source = float(mpp), "given (--slide_mpp)"
        elif magnification is not None:
            use_mpp, source = mpp_from_magnification(magnification), "given magnification"
        elif backend.mpp is not None:
            use_mpp, source = backend.mpp, f"file ({backend.mpp_source})"
        elif backend.magnification is not None:
            use_mpp = mpp_from_magnification(backend.magnification)
            source = "file objective power"
        else:
            note = f"; {backend.mpp_note}" if backend.mpp_note else ""
            raise HoverNetError(
                f"{path}: the file records no resolution (microns per pixel{note}); pass "
                "--slide_mpp auto to estimate it from the nuclei, or give it with --slide_mpp "
                "(e.g. 0.25 at 40x) or --slide_mag (e.g. 40)"
            )
        return Slide(path, backend, use_mpp, mag, source)
    except BaseException:
        backend.close()
        raise


def resolve_proc_mpp(
    model_mpp: float | None, proc_mpp: float | None, proc_mag: float | None
) -> float:
    """The processing resolution: `--proc_mpp`, else `--proc_mag` (10 / mag), else the model's.

    Giving both options, a non-positive value, or nothing when the checkpoint records no
    resolution is a HoverNetError."""
    if proc_mpp is not None and proc_mag is not None:
        raise HoverNetError(
            f"--proc_mpp {proc_mpp} and --proc_mag {proc_mag} both given; give only one"
        )
    for value, name in ((proc_mpp, "--proc_mpp"), (proc_mag, "--proc_mag")):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise HoverNetError(f"{name} must be a positive number, got {value!r}")
    if proc_mpp is not None:
        return float(proc_mpp)
    if proc_mag is not None:
        return mpp_from_magnification(float(proc_mag))
    if model_mpp is not None:
        if not (model_mpp > 0 and math.isfinite(model_mpp)):
            raise HoverNetError(
                f"the checkpoint's resolution {model_mpp!r} um/px is not valid; "
                "give --proc_mpp or --proc_mag"
            )
        return float(model_mpp)
    raise HoverNetError(
        "the checkpoint does not record the resolution it was trained at; give --proc_mpp "
        "(e.g. 0.25) or --proc_mag (e.g. 40)"
    )


def open_backend(path: Path, backend: str = "auto") -> Backend:
    """The backend for `path` (see `hovernet.io.wsi.open_slide`). A file whose content is not
    what its extension says (a JPEG renamed .svs) is refused naming its real format
    (`hovernet.io.input_checks.format_mismatch`). TIFF-based files (TIFF, SVS, NDPI, ...) are
    checked first (`hovernet.io.tiff_checks`): a file cut short or with broken tile offsets is
    refused here, whichever library then reads it."""
    if path.is_dir() or not path.exists():
        raise HoverNetError(f"{path}: no such file")
    tiff_checks.check_not_empty(path)
    if path.suffix.lower() not in PLAIN_SUFFIXES:  # plain images are decoded by their content
        mismatch = format_mismatch(path)  # a JPEG renamed .svs: say so, not "cannot open"
        if mismatch is not None:
            raise HoverNetError(f"{path}: {mismatch}")
    if backend == "tifffile":
        return TiffBackend(path)
    if backend == "openslide":
        if tiff_checks.is_tiff(path):
            try:
                tiff_checks.verify_tiff(path, "slide", tiff_levels)
            except tiff_checks.TiffParseError:
                pass  # not damaged as far as can be seen: OpenSlide says whether it reads it
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
    plain_tiff = suffix in TIFF_SUFFIXES
    opened = parse_error = None
    if plain_tiff or tiff_checks.is_tiff(path):
        try:
            opened = tiff_checks.open_tiff(path, "slide", tiff_levels)  # raises when damaged
        except tiff_checks.TiffParseError as exc:
            parse_error = exc  # OpenSlide may still read it

    def tiff_backend() -> Backend:
        nonlocal opened
        handed, opened = opened, None  # the backend owns (and closes) the open file now
        return TiffBackend(path, handed)

    try:
        if opened is not None and plain_tiff and prefers_tifffile(opened[0]):
            return tiff_backend()
        osr, error = _try_openslide(path)
        if osr is not None:
            # OpenSlide sees only the first level of some pyramids that tifffile reads whole
            if opened is None or not plain_tiff or len(osr.level_dimensions) >= len(opened[1]):
                return OpenSlideBackend(path, osr)
            osr.close()
        if opened is not None:
            return tiff_backend()
        if parse_error is not None:
            raise parse_error
        raise HoverNetError(f"{path}: OpenSlide cannot open this slide ({error})")
    finally:
        if opened is not None:
            opened[0].close()
