"""Tissue masks for whole slides: which parts of a slide are worth segmenting.

`tissue_mask(thumb_rgb, params, mpp=...)` thresholds a slide thumbnail (Otsu on saturation or
grey level, with bounds so that a slide without background or without tissue still gets a
sensible answer) and cleans the result with morphology: closing, removal of small specks,
filling of small holes and an optional margin. `mask_from_user_image` turns a user's mask image
into the same boolean form. Which regions touch the mask is `hovernet.infer.regions.TissueBoxes`
(boxes moved between grids by `hovernet.grids.Grid`). Pure array functions; reading thumbnails
is `Slide.thumbnail`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection settings. Sizes are in microns (converted with the mask's mpp).

    method: "saturation" (H&E and most stains: tissue is coloured, glass is grey-white) or
        "grey" (tissue darker than glass; for faint or unusual stains).
    min_threshold / max_threshold: bounds on the Otsu threshold (0-255). Saturation of clean
        glass is below ~15 and of stained tissue above ~30; the bounds keep an all-glass
        thumbnail empty and an all-tissue one full. Without glass, Otsu splits the tissue
        itself: on seed_format/slide_a (no glass) it chose 62 and dropped pale stroma
        (saturation 40-60) with 9 % of the nuclei; at most 40 the slide is whole, and the demo
        slide's mask (with glass, Otsu 52) grows by 0.4 %. For "grey" the signal is the
        darkness (255 - grey level), with the same bounds.
    dark_limit: pixels darker than this grey level (pen marks, scanner borders) are never tissue.
    smooth_um: median filter size before thresholding (noise, stain speckle); 0 = none.
    closing_um: radius of the closing that joins nearby tissue fragments.
    min_area_um2: tissue pieces smaller than this are dropped (dust, debris).
    max_hole_um2: holes inside tissue smaller than this are filled; 0 = none.
    margin_um: dilation of the final mask, so that nuclei on the tissue edge are processed.
    fallback_mpp: thumbnail mpp assumed when `tissue_mask` is not told it.
    """

    method: str = "saturation"
    min_threshold: int = 20
    max_threshold: int = 40
    dark_limit: int = 25
    smooth_um: float = 16.0
    closing_um: float = 32.0
    min_area_um2: float = 20_000.0
    max_hole_um2: float = 50_000.0
    margin_um: float = 16.0
    fallback_mpp: float = 8.0

    def __post_init__(self) -> None:
        if self.method not in ("saturation", "grey"):
            raise ValueError(
                f"TissueParams.method must be 'saturation' or 'grey', not {self.method!r}"
            )
        if not 0 <= self.min_threshold <= self.max_threshold <= 255:
            raise ValueError("TissueParams needs 0 <= min_threshold <= max_threshold <= 255")


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (the value t; foreground is > t)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    if between.max() <= 0:  # a single grey level
        return float(values.flat[0])
    return float(np.argmax(between))


def _disk(radius_px: int) -> np.ndarray:
    r = max(0, int(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy <= r * r + r).astype(np.uint8)


# Morphology by `_disk(r)` (offsets with dx^2 + dy^2 <= r^2 + r), bit-identical to cv2.dilate /
# cv2.erode / cv2.morphologyEx with that kernel and cv2's default borders, in O(1) per pixel
# whatever the radius (cv2 with a disk kernel costs O(r) per pixel or more). Integer arithmetic
# and max / min filters only, so exact by construction (no floating point distance transform):
#   g(x', y) = vertical distance from (x', y) to the nearest set pixel of column x' (capped at
#   r + 1); (x, y) is in the dilation iff some x' in [x - r, x + r] has |x - x'| <= w[g(x', y)],
#   where w[k] is the half-width of the disk's row at height k: two sliding max / min filters
#   along the columns, a table look-up, two along the rows (cv2 box filters, O(1) per pixel).
# Measured on the development machine (2 shared cores), one dilation of a 2196 x 1318 mask:
# cv2 with the disk 1 ms at r = 2, 4 ms at r = 4, 10 ms at r = 8, 14 ms at r = 10, 31 ms at
# r = 16, 153 ms at r = 37, 590 ms at r = 73; here 10.5 ms at r = 2 .. 16 and 15-21 ms at
# r = 37 .. 73 (the fixed cost of six filters and a look-up). So cv2 up to r = 8, where the two
# meet (10 ms).
_CV2_MAX_RADIUS = 8


def _median_blur(rgb: np.ndarray, size: int) -> np.ndarray:
    """`cv2.medianBlur(rgb, size)`, bit-identical, in horizontal stripes on up to
    `cv2.getNumThreads()` threads (cv2 runs this filter on one thread: 120 ms for a 2048 x 1170
    RGB thumbnail at size 37, 62 ms in two stripes on 2 cores). Each stripe is filtered with
    size // 2 rows of context on either side, so its own rows see exactly the rows the whole
    image gives them; cv2's replicated border only reaches the dropped context rows, except at
    the image's top and bottom, where it is the whole image's border."""
    import cv2

    h = rgb.shape[0]
    half = size // 2
    n = max(1, min(cv2.getNumThreads(), h // (4 * size)))  # stripes of at least 4 sizes
    if n == 1:
        return cv2.medianBlur(rgb, size)
    from concurrent.futures import ThreadPoolExecutor

    out = np.empty_like(rgb)
    bounds = [h * i // n for i in range(n + 1)]

    def stripe(i: int) -> None:
        y0, y1 = bounds[i], bounds[i + 1]
        c0, c1 = max(0, y0 - half), min(h, y1 + half)
        out[y0:y1] = cv2.medianBlur(rgb[c0:c1], size)[y0 - c0 : y1 - c0]

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(stripe, range(n)))  # list(): raise a stripe's error here
    return out


def _disk_half_widths(radius: int) -> np.ndarray:
    """w[k]: half-width of the row |dy| = k of `_disk(radius)` (k = 0 .. radius + 1; -1 where
    the row is empty)."""
    t = radius * radius + radius
    return np.array(
        [math.isqrt(t - k * k) if k * k <= t else -1 for k in range(radius + 2)], np.int32
    )


def _dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """`cv2.dilate(mask, _disk(radius))` of a bool mask, as bool (pixels beyond the array are
    unset, as cv2 takes them)."""
    import cv2

    out = np.zeros(mask.shape, bool)
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return out
    xs = np.flatnonzero(mask.any(axis=0))
    # the dilation lies within the set pixels' bounding box grown by the radius
    y0, y1 = max(0, ys[0] - radius), min(mask.shape[0], ys[-1] + radius + 1)
    x0, x1 = max(0, xs[0] - radius), min(mask.shape[1], xs[-1] + radius + 1)
    m = mask[y0:y1, x0:x1]
    h, w = m.shape
    r = radius
    if max(h, w) + r + 2 > np.iinfo(np.uint16).max:  # beyond uint16 indices (never for thumbnails)
        out[y0:y1, x0:x1] = cv2.dilate(m.view(np.uint8), _disk(r)).view(bool)
        return out
    u16 = np.uint16
    column = np.ones((r + 1, 1), np.uint8)  # windows of r + 1 pixels, ends set by the anchor
    row = np.ones((1, r + 1), np.uint8)
    ys_ = np.arange(h, dtype=u16)[:, None]
    xs_ = np.arange(w, dtype=u16)
    # nearest set pixel at or above within r rows: max of y' + r + 1 over set y' in [y - r, y]
    # (0: none; cv2.dilate takes pixels beyond the array as 0); g_up = y - y', or >= r + 1
    above = cv2.dilate(m * (ys_ + u16(r + 1)), column, anchor=(0, r))
    g = (ys_ + u16(r + 1)) - above
    # nearest set pixel at or below within r rows: max of h + r - y' over set y' in [y, y + r]
    below = cv2.dilate(m * (u16(h + r) - ys_), column, anchor=(0, 0))
    np.minimum(g, (u16(h + r) - below) - ys_, out=g)
    np.minimum(g, u16(r + 1), out=g)
    reach = np.take(_disk_half_widths(r) + 1, g).astype(u16)  # w[g] + 1, in 0 .. r + 1
    # covered from the left: max of x' + w[g(x')] + 1 over [x - r, x] exceeds x;
    # from the right: min of x' - w[g(x')] + r + 1 over [x, x + r] is at most x + r + 1
    # (cv2.erode takes pixels beyond the array as 65535: never covering)
    from_left = cv2.dilate(reach + xs_, row, anchor=(r, 0)) > xs_
    from_right = cv2.erode((xs_ + u16(r + 2)) - reach, row, anchor=(0, 0)) <= xs_ + u16(r + 1)
    out[y0:y1, x0:x1] = from_left | from_right
    return out


def _close_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Closing by `_disk(radius)` of `mask` padded with radius + 1 unset pixels (so that the
    border neither invents nor loses tissue), cropped back: as bool,
    `cv2.morphologyEx(np.pad(mask, radius + 1), MORPH_CLOSE, _disk(radius))[pad:-pad, pad:-pad]`
    (cv2.erode takes pixels beyond the array as set, cv2.dilate as unset)."""
    import cv2

    out = np.zeros(mask.shape, bool)
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return out
    xs = np.flatnonzero(mask.any(axis=0))
    # The closing lies within the bounding box of the set pixels (for a pixel p left of the box,
    # the disk centred r pixels left of p holds p and misses every set pixel, so the erosion
    # drops p; likewise on the other sides), and a pixel in the box only depends on pixels
    # within 2 r of it, where the padded box holds the same as the padded mask: work on the
    # box, padded.
    pad = radius + 1
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    padded = np.pad(mask[box], pad)
    if radius <= _CV2_MAX_RADIUS:
        closed = cv2.morphologyEx(padded.view(np.uint8), cv2.MORPH_CLOSE, _disk(radius))
        closed = closed.view(bool)
    else:
        # erosion = complement of the dilation of the complement (beyond the array: set, as
        # cv2.erode takes it)
        closed = ~_dilate_disk(~_dilate_disk(padded, radius), radius)
    out[box] = closed[pad:-pad, pad:-pad]
    return out


# Speed, measured with benchmarks/bench_tissue.py (previous code in the same process, 2 shared
# cores): on the full-resolution thumbnails of seed_format/slide_a and slide_b (2048 x 1170 at
# 0.4375 um/px: closing radius 73, margin 37) 0.85-1.40 s before, 0.16-0.22 s now (5.5-6.4x:
# the closing 0.60-1.13 s -> 0.03-0.05 s, the margin 0.07-0.11 s -> 0.01 s); on the demo
# slide's (0.72 um/px, radius 44) 0.52 -> 0.19 s (2.8x). Coarse thumbnails (radius <= 16) gain
# little (1.0-1.4x): their time is the median blur (0.1-0.25 s, the same before and now when
# the other core is busy, half when it is free), which is most of what is left.
def tissue_mask(
    thumb_rgb: np.ndarray, params: TissueParams = TissueParams(), mpp: float | None = None
) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail whose pixels are `mpp` microns wide."""
    import cv2
    from scipy import ndimage

    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] < 3:
        raise ValueError(f"expected an RGB thumbnail, got shape {thumb_rgb.shape}")
    rgb = np.ascontiguousarray(thumb_rgb[:, :, :3], dtype=np.uint8)
    px = mpp if mpp and mpp > 0 else params.fallback_mpp

    smooth = int(round(params.smooth_um / px)) | 1  # odd size
    if smooth >= 3:
        rgb = _median_blur(rgb, min(smooth, 255))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if params.method == "saturation":
        signal = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    else:
        signal = 255 - grey  # darkness: tissue is darker than glass
    t = min(max(_otsu(signal), params.min_threshold), params.max_threshold)
    mask = signal > t
    mask &= grey >= params.dark_limit

    radius = int(round(params.closing_um / px))
    if radius >= 1:
        mask = _close_disk(mask, radius)  # padded: the border neither invents nor loses tissue

    area_px = params.min_area_um2 / (px * px)
    if area_px > 1 and mask.any():
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= area_px
        keep[0] = False
        mask = keep[labels]

    hole_px = params.max_hole_um2 / (px * px)
    if hole_px >= 1 and mask.any():
        holes = ~mask
        labels, n = ndimage.label(holes)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        small = sizes < hole_px
        small[0] = False
        small[border] = False  # background touching the edge is not a hole
        mask = mask | small[labels]

    margin = int(round(params.margin_um / px))
    if margin >= 1 and mask.any():
        mask = _dilate(mask, margin)
    return mask


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """`cv2.dilate(mask, _disk(radius))` as bool: cv2 itself up to `_CV2_MAX_RADIUS`, else
    `_dilate_disk` (the same pixels, O(1) per pixel)."""
    import cv2

    if radius <= _CV2_MAX_RADIUS:
        return cv2.dilate(mask.view(np.uint8), _disk(radius)).view(bool)
    return _dilate_disk(mask, radius)


def mask_from_user_image(mask: np.ndarray) -> np.ndarray:
    """A user's mask image as a boolean mask: any non-zero (non-black) pixel is tissue.

    Accepts bool, grey (H, W), RGB or RGBA (H, W, 3|4); in RGBA, fully transparent pixels are
    background whatever their colour."""
    arr = np.asarray(mask)
    if arr.ndim == 2:
        return arr != 0
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        tissue = (arr[:, :, : min(3, arr.shape[2])] != 0).any(axis=2)
        if arr.shape[2] == 4:
            tissue &= arr[:, :, 3] != 0
        return tissue
    raise ValueError(f"expected a 2-D mask or an RGB(A) image, got shape {arr.shape}")


def mask_mpp(mask_shape: tuple[int, ...], dimensions: tuple[int, int], mpp: float) -> float:
    """The mpp of a mask covering a whole slide of level-0 `dimensions` (width, height) at `mpp`.

    Raises ValueError when the mask's aspect ratio differs from the slide's by more than 2 %
    (it then cannot be a mask of this slide)."""
    mh, mw = int(mask_shape[0]), int(mask_shape[1])
    w0, h0 = dimensions
    sx, sy = w0 / mw, h0 / mh
    if abs(sx - sy) > 0.02 * max(sx, sy) + 1.0 / min(mw, mh) * max(sx, sy):
        raise ValueError(
            f"the mask is {mw} x {mh} px but the slide is {w0} x {h0} px: not the same "
            "aspect ratio; give a mask of the whole slide (any size)"
        )
    return mpp * (sx + sy) / 2


def tissue_area_mm2(mask: np.ndarray, mask_mpp: float) -> float:
    """Area of the tissue in `mask` in square millimetres."""
    return float(np.count_nonzero(mask)) * (mask_mpp * 1e-3) ** 2
