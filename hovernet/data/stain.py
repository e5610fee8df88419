"""Stain shifts and stain normalisation of H&E images: pure array-in/array-out functions.

Shifts (to measure robustness, `hovernet infer` never applies them): Beer-Lambert optical
density, OD = -ln(I / 255) per RGB channel (I floored at 1), is split into haematoxylin, eosin
and DAB amounts with the stain vectors of scikit-image's `rgb2hed` (Ruifrok and Johnston);
each amount is scaled and offset (`HedShift`: amount * scale + offset, as in HED jitter) and
the image is rebuilt from the new amounts. Scale 1 and offset 0 give the image back (within
rounding). `SHIFTS` names a few realistic ones; `shift_image(image, name, seed)` draws a small
seeded per-image jitter around the named parameters, so the same (name, seed) gives the same
pixels.

Normalisation (`hovernet infer --stain_norm REF`): Reinhard's colour transfer in CIELAB.
`reinhard_fit(reference)` gives the reference's per-channel LAB mean and standard deviation
over its tissue pixels (`tissue_pixels`: L* below 90, i.e. not the bright glass);
`reinhard_apply(image, params)` maps the image's own tissue statistics onto those (every pixel,
(x - mean_img) / std_img * std_ref + mean_ref) and converts back to uint8 RGB. The image's
statistics are its own: each tile (slide mode: each region read) is normalised on its own pixels.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import cv2
import numpy as np
from skimage.color import rgb_from_hed

# rows: the H, E and DAB optical-density vectors (unit length), as rgb2hed uses them
STAIN_VECTORS = np.asarray(rgb_from_hed, dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(STAIN_VECTORS)


@dataclass(frozen=True)
class HedShift:
    """amount' = amount * scale + offset for the (H, E, DAB) amounts; `jitter`: the half-width
    of a uniform per-image draw added to each scale (and, times 0.05, to each offset)."""

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    jitter: float = 0.0
    note: str = ""


SHIFTS: dict[str, HedShift] = {
    "none": HedShift(note="identity (the test split as stored)"),
    "pale_h": HedShift(
        (0.6, 1.0, 1.0), jitter=0.05, note="under-stained haematoxylin: short staining time"
    ),
    "strong_e": HedShift(
        (1.0, 1.6, 1.0), jitter=0.05, note="over-stained eosin: long eosin, thick section"
    ),
    "blue_scanner": HedShift(
        (1.25, 0.75, 1.0),
        (0.03, 0.0, 0.0),
        jitter=0.05,
        note="blue/purple cast: strong H, weak E, a haematoxylin tint over all (scanner/lab)",
    ),
    "faded": HedShift(
        (0.65, 0.65, 1.0), jitter=0.05, note="faded: old or light-exposed slide, both stains"
    ),
    "severe_fade": HedShift(
        (0.35, 0.35, 1.0), jitter=0.05, note="severely faded or under-stained: beyond the usual"
    ),
}


def to_amounts(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> H x W x 3 float64 (H, E, DAB) stain amounts (Beer-Lambert)."""
    od = -np.log(np.maximum(image.astype(np.float64), 1.0) / 255.0)
    return od @ HED_FROM_RGB


def from_amounts(amounts: np.ndarray) -> np.ndarray:
    """The inverse of `to_amounts`: stain amounts -> uint8 RGB (rounded, clipped)."""
    rgb = 255.0 * np.exp(-(amounts @ STAIN_VECTORS))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def hed_shift(image: np.ndarray, scale, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """`image` with its (H, E, DAB) amounts scaled by `scale` and offset by `offset`."""
    amounts = to_amounts(image) * np.asarray(scale, float) + np.asarray(offset, float)
    return from_amounts(amounts)


def shift_params(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (scale, offset) that `shift_image(image, name, seed)` applies."""
    if name not in SHIFTS:
        raise ValueError(f"unknown stain shift {name!r}: one of {', '.join(SHIFTS)}")
    shift = SHIFTS[name]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # stable as SHIFTS grows
    draw = rng.uniform(-shift.jitter, shift.jitter, size=(2, 3))
    return np.asarray(shift.scale) + draw[0], np.asarray(shift.offset) + 0.05 * draw[1]


def shift_image(image: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """`image` re-coloured by the named shift of `SHIFTS`, its jitter drawn from `seed`."""
    if name == "none":
        return np.array(image, dtype=np.uint8, copy=True)
    scale, offset = shift_params(name, seed)
    return hed_shift(image, scale, offset)


def to_lab(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 CIELAB (L* 0-100, a* and b* about -128..127; D65, OpenCV)."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB -> uint8 RGB (rounded, clipped to the gamut)."""
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def tissue_pixels(lab: np.ndarray) -> np.ndarray:
    """N x 3 LAB pixels that are not bright glass (L* < 90); all pixels when fewer than 1 %
    are (an image of glass alone)."""
    flat = lab.reshape(-1, 3)
    keep = flat[:, 0] < 90.0
    return flat[keep] if keep.mean() >= 0.01 else flat


def lab_stats(image: np.ndarray) -> np.ndarray:
    """2 x 3: the per-channel LAB mean and standard deviation over `image`'s tissue pixels."""
    pixels = tissue_pixels(to_lab(image)).astype(np.float64)
    return np.stack([pixels.mean(0), pixels.std(0)])


def reinhard_fit(reference: np.ndarray) -> np.ndarray:
    """The reference's parameters for `reinhard_apply` (its `lab_stats`)."""
    return lab_stats(reference)


def reinhard_lab(image: np.ndarray, params: np.ndarray) -> np.ndarray:
    """`image`'s LAB (float32) with its tissue mean/std mapped onto the reference's `params`."""
    own = lab_stats(image)
    ratio = params[1] / np.maximum(own[1], 1e-6)
    return ((to_lab(image) - own[0]) * ratio + params[0]).astype(np.float32)


def reinhard_apply(image: np.ndarray, params: np.ndarray) -> np.ndarray:
    """`image` (uint8 RGB) normalised to the reference's `params` (`reinhard_lab`), as RGB."""
    return from_lab(reinhard_lab(image, params))
