"""Tissue masks for whole slides: which parts of a slide are worth segmenting.

`tissue_mask(thumb_rgb, params, mpp=...)` thresholds a slide thumbnail (Otsu on saturation or
grey level, with bounds so that a slide without background or without tissue still gets a
sensible answer) and cleans the result with morphology: closing, removal of small specks,
filling of small holes and an optional margin. `mask_from_user_image` turns a user's mask image
into the same boolean form, and `region_has_tissue` asks whether a region (given at any
resolution) touches the mask. Pure array functions; reading thumbnails is `Slide.thumbnail`.
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
        thumbnail empty and an all-tissue one full. For "grey" the signal is the darkness
        (255 - grey level), with the same bounds.
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
    max_threshold: int = 60
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
        rgb = cv2.medianBlur(rgb, min(smooth, 255))
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
        pad = radius + 1  # closing near the border must not invent or lose tissue
        padded = np.pad(mask, pad).astype(np.uint8)
        padded = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _disk(radius))
        mask = padded[pad:-pad, pad:-pad].astype(bool)

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
        mask = cv2.dilate(mask.astype(np.uint8), _disk(margin)).astype(bool)
    return mask


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


def _mask_box(
    mask_shape: tuple[int, ...], mask_mpp: float, x: int, y: int, w: int, h: int, mpp: float
) -> tuple[int, int, int, int]:
    s = mpp / mask_mpp
    mh, mw = mask_shape[:2]
    x0 = max(0, math.floor(x * s))
    y0 = max(0, math.floor(y * s))
    x1 = min(mw, math.ceil((x + w) * s))
    y1 = min(mh, math.ceil((y + h) * s))
    return x0, y0, x1, y1


def region_has_tissue(
    mask: np.ndarray,
    mask_mpp: float,
    x: int,
    y: int,
    w: int,
    h: int,
    mpp: float,
    min_fraction: float = 0.0,
) -> bool:
    """Whether the region (x, y, w, h) in the pixel grid at `mpp` covers tissue in `mask`
    (whose pixels are `mask_mpp` wide): any tissue pixel when `min_fraction` is 0, else at least
    that share of the mask pixels the region touches."""
    x0, y0, x1, y1 = _mask_box(mask.shape, mask_mpp, x, y, w, h, mpp)
    if x1 <= x0 or y1 <= y0:
        return False
    window = mask[y0:y1, x0:x1]
    if min_fraction <= 0:
        return bool(window.any())
    return float(window.mean()) >= min_fraction


def tissue_area_mm2(mask: np.ndarray, mask_mpp: float) -> float:
    """Area of the tissue in `mask` in square millimetres."""
    return float(np.count_nonzero(mask)) * (mask_mpp * 1e-3) ** 2
