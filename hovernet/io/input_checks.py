"""What an input file really is, and whether an H&E model can read its pixels.

- `sniff_format(first_bytes)`: the format that a file's first bytes (its magic number) name,
  whatever its extension says: "JPEG", "PNG", "TIFF", "ZIP", "HTML", "empty file", ... or None.
- `format_mismatch(path)`: one phrase naming the real format of a file whose extension lies (a
  JPEG renamed .svs) and what to do, or None.
- `png_intact(buf)`, `jpeg_intact(data)`: the file is whole (checked before decoding, so that a
  damaged file gives one clean error instead of the decoder's message on stderr).
- `colour_problem(rgb)`: why an RGB image cannot be H&E, or None. An image has practically no
  colour when fewer than `MIN_COLOURED` of its stained pixels (neither glass nor black: the
  darkest channel below `WHITE_LEVEL`, the brightest above `BLACK_LEVEL`) have channels that
  differ by `COLOUR_LEVELS` or more. Measured on every image in shared/data (MoNuSeg, CoNSeP,
  DSB 2018, CRCHisto, CryoNuSeg, the seed and SVS slides' thumbnails) and the bundled samples:
  the palest, CoNSeP's fat crops, still have 40 % of such pixels; greyscale versions of all of
  them, saved as colour JPEGs, have none. An image with fewer than `MIN_STAINED` stained pixels
  (blank glass, an all-black tile) has nothing to judge and passes.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError

WHITE_LEVEL = 220  # a pixel whose darkest channel is at least this is glass / background
BLACK_LEVEL = 30  # a pixel whose brightest channel is at most this is a black border
COLOUR_LEVELS = 6  # a pixel is coloured when its channels span this many grey levels or more
MIN_COLOURED = 0.05  # share of the stained pixels that must be coloured
MIN_STAINED = 100  # fewer stained pixels: nothing to judge
SAMPLE_PIXELS = 250_000  # larger images are judged on a regular subsample of about this many
SNIFF_BYTES = 512

HE_HINT = "hovernet segments H&E-stained RGB images: give it the colour scan"


def colour_problem(rgb: np.ndarray) -> str | None:
    """Why `rgb` (H x W x 3 uint8; H x W grey also accepted) cannot be an H&E image, or None.

    See the module docstring for the criterion."""
    arr = np.asarray(rgb)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    step = max(1, round(np.sqrt(arr.shape[0] * arr.shape[1] / SAMPLE_PIXELS)))
    arr = arr[::step, ::step]
    if arr.ndim == 2:
        high = low = arr
    else:
        red, green, blue = arr[:, :, 0], arr[:, :, 1], arr[:, :, 2]
        high = np.maximum(np.maximum(red, green), blue)
        low = np.minimum(np.minimum(red, green), blue)
    stained = (low < WHITE_LEVEL) & (high > BLACK_LEVEL)
    n_stained = np.count_nonzero(stained)
    if n_stained < MIN_STAINED:
        return None
    coloured = np.count_nonzero(stained & (high - low >= COLOUR_LEVELS)) / n_stained
    if coloured >= MIN_COLOURED:
        return None
    return f"greyscale image ({coloured:.1%} of its stained pixels show colour); {HE_HINT}"


def refuse_colourless(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """A HoverNetError naming `path` when its pixels `rgb` (the image, or a thumbnail of it)
    cannot be H&E (`colour_problem`)."""
    problem = colour_problem(rgb)
    if problem is not None:
        raise HoverNetError(f"{path}: {problem}")


# ---------------------------------------------------------------------------------------------
# file formats

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    (b"%PDF", "PDF"),
    (b"SQLite format 3\x00", "SQLite"),
    (b"\x93NUMPY", "NumPy"),
    (b"version https://git-lfs", "Git LFS pointer"),
)

# what each extension's files are; other extensions (.mrxs, .vms, ...) are not judged
EXPECTED = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".svs": "TIFF",
    ".ndpi": "TIFF",
    ".scn": "TIFF",
    ".bif": "TIFF",
    ".svslide": "SQLite",
    ".dcm": "DICOM",
}
PLAIN = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp"}

_FIX = {
    "TIFF": "rename it to .tif",
    "DICOM": "rename it to .dcm",
    "GIF": "convert it to PNG",
    "WebP": "convert it to PNG",
    "JPEG 2000": "convert it to TIFF or PNG",
    "ZIP": "extract the image from the archive first",
    "gzip": "decompress it first",
    "7-Zip": "extract the image from the archive first",
    "HTML": "a web page was saved instead of the image (a failed download?): download it again",
    "Git LFS pointer": "only the Git LFS pointer was checked out: run `git lfs pull`",
    "empty file": "re-copy or re-export the image",
}


def sniff_format(first_bytes: bytes) -> str | None:
    """The format named by a file's first bytes (512 are plenty), or None when unknown.

    Images: "JPEG", "PNG", "TIFF" (BigTIFF too), "BMP", "GIF", "WebP", "JPEG 2000", "DICOM";
    other files: "ZIP", "gzip", "7-Zip", "PDF", "SQLite", "NumPy", "Git LFS pointer", "HTML",
    "XML", "text" (printable UTF-8 without NUL bytes); no bytes: "empty file"."""
    data = bytes(first_bytes)
    if not data:
        return "empty file"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[128:132] == b"DICM":
        return "DICOM"
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 3:  # not just a character cut at the end
            return None
        text = data[: exc.start].decode("utf-8")
    if sum(not (c.isprintable() or c in "\r\n\t") for c in text) > len(text) // 100:
        return None
    head = text.lstrip().lower()
    if head.startswith(("<!doctype html", "<html", "<head", "<body")):
        return "HTML"
    if head.startswith("<?xml"):
        return "XML"
    return "text"


def read_head(path: str | os.PathLike, size: int = SNIFF_BYTES) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def format_mismatch(path: str | os.PathLike) -> str | None:
    """'this is a JPEG file, not a .svs file as its name says; <fix>' when the file's content
    is a known format other than the one its extension stands for, else None (also for
    extensions that are not judged and content that is not recognised). Callers prefix the
    file's name."""
    path = Path(path)
    suffix = path.suffix.lower()
    expected = EXPECTED.get(suffix)
    if expected is None:
        return None
    try:
        found = sniff_format(read_head(path))
    except OSError:
        return None
    if found is None or found == expected:
        return None
    if found in PLAIN:
        fix = f"rename it to {PLAIN[found]}"
        if expected not in PLAIN and suffix not in (".tif", ".tiff"):
            fix += " (a plain image, not a slide: `hovernet infer tile` segments it)"
    else:
        fix = _FIX.get(found, "check that it is the file you meant")
    what = found if found in ("empty file", "Git LFS pointer") else f"{found} file"
    article = "an" if what[0] in "aeiouAEIOU" or found in ("HTML", "XML", "SQLite") else "a"
    return f"this is {article} {what}, not a {suffix} file as its name says; {fix}"


# ---------------------------------------------------------------------------------------------
# whole files

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_intact(buf: np.ndarray) -> bool:
    """The PNG chunk structure is whole: signature, every chunk's CRC, and an IEND chunk.

    Checked before decoding so that a corrupt or truncated file gives one clean error instead
    of libpng's message on stderr.
    """
    data = memoryview(buf)
    if bytes(data[:8]) != PNG_SIGNATURE:
        return False
    pos, end = 8, len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        stop = pos + 8 + length
        if stop + 4 > end:
            return False
        crc = int.from_bytes(data[stop : stop + 4], "big")
        if zlib.crc32(data[pos + 4 : stop]) != crc:
            return False
        if kind == b"IEND":
            return True
        pos = stop + 4
    return False


def jpeg_intact(data: bytes) -> bool:
    """The JPEG has an end-of-image marker after its first scan (a copy cut short has not).

    Marker segments are skipped by their lengths up to the first scan (so an embedded EXIF
    thumbnail's markers do not count); inside scan data 0xFF 0xD9 can only be that marker.
    """
    pos, end = 2, len(data)
    if data[:2] != b"\xff\xd8":
        return False
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos) >= 0
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False
