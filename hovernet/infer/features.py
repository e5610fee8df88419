"""Per-nucleus colour and texture features from the RGB pixels and the instance map (pure:
arrays in, numbers out; all nuclei of a crop at once, as `hovernet.infer.measure`).

Colour deconvolution: Ruifrok & Johnston's haematoxylin, eosin and DAB stain vectors (those of
scikit-image's `rgb2hed`), fixed, not estimated per slide. A pixel's optical density per
channel is OD = -log10(I / 255) (I floored at 255e-6, as `rgb2hed`), the three ODs are
projected onto the stains by the inverse of the stain matrix and negative stain amounts are set
to 0: 6 x `skimage.color.rgb2hed` to rounding (which divides natural logs by ln(1e-6)), i.e.
decadic OD. OD is unitless.

Compartments, at the resolution of the instance map (pixel centres):
- nucleus: its pixels;
- ring: the pixels within `ring_um` microns (Euclidean, OpenCV's exact distance transform) of
  the nucleus that belong to no nucleus, are not glass (summed RGB OD >= GLASS_OD) and are
  nearer to it than to any other nucleus (OpenCV's labelled distance transform, 5 x 5 mask:
  ties and near-ties go either way): a band of cytoplasm, as HistomicsTK's nuclear features
  use, that never overlaps another nucleus or its band.

Per compartment and stain: mean, std (population), min, max and sum over the pixels.
Texture: grey-level co-occurrence of the nucleus's haematoxylin OD quantised to GLCM_LEVELS
levels over [0, GLCM_OD_MAX) (higher values in the top level), pixel pairs at distance 1 in
the four directions 0, 45, 90 and 135 degrees (scikit-image's angles), both pixels in the
nucleus, symmetric and normalised per direction; contrast, homogeneity and entropy (natural
log) as `skimage.feature.graycoprops` defines them, averaged over the directions that have
pairs. A feature without pixels (an empty ring, a one-pixel nucleus's texture) is NaN.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from hovernet.data.stain import HED_FROM_RGB  # Ruifrok & Johnston's, as rgb2hed
from hovernet.errors import HoverNetError
from hovernet.nuclei import FEATURES

RING_UM = 2.0  # default ring width, microns
GLASS_OD = 0.15  # summed RGB OD under which a ring pixel counts as glass
GLCM_LEVELS = 32
GLCM_OD_MAX = 2.0
GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))  # (row, column) steps: 0, 45, 90, 135 degrees

_OD = -np.log10(np.maximum(np.arange(256) / 255.0, 1e-6))  # OD of each 8-bit value
# each 8-bit value's share of the haematoxylin and eosin OD, per RGB channel: [stain][channel]
_SHARE = [[_OD * HED_FROM_RGB[c, s] for c in range(3)] for s in range(2)]
_STATS = ("mean", "std", "min", "max", "sum")


def stain_od(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 2) haematoxylin and eosin OD (see the module docstring)."""
    rgb = np.asarray(rgb, np.uint8)
    return np.stack(_stains(rgb.reshape(-1, 3)), axis=-1).reshape(*rgb.shape[:-1], 2)


def _stains(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin OD of N x 3 uint8 pixels: three table look-ups each."""
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    out = []
    for red, green, blue in _SHARE:
        od = red[r] + green[g] + blue[b]
        out.append(np.maximum(od, 0.0, out=od))
    return out[0], out[1]


def ring_labels(inst_map: np.ndarray, radius_px: float) -> np.ndarray:
    """Each pixel within `radius_px` of a nucleus that is in no nucleus, labelled with the
    nearest nucleus's id (0 elsewhere); glass is not excluded here."""
    labels = np.asarray(inst_map)
    out = np.zeros(labels.shape, np.int64)
    nucleus_px = np.flatnonzero(labels)
    if not len(nucleus_px) or radius_px <= 0:
        return out
    free = (labels == 0).view(np.uint8)
    dist = cv2.distanceTransform(free, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    # OpenCV numbers the zero pixels of `free` (the nucleus pixels) 1.. in row-major order
    _, nearest = cv2.distanceTransformWithLabels(
        free, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    # exact distances are square roots of integers: 1e-3 only absorbs float32 rounding
    ring = np.flatnonzero((dist > 0) & (dist <= radius_px + 1e-3))
    out.ravel()[ring] = labels.ravel()[nucleus_px[nearest.ravel()[ring] - 1]]
    return out


def nucleus_features(
    image: np.ndarray,
    inst_map: np.ndarray,
    nuclei: Iterable[int],
    mpp: float | None,
    ring_um: float = RING_UM,
) -> dict[int, dict[str, float]]:
    """The FEATURES of each nucleus id in `nuclei` (see the module docstring); `image` is the
    H x W x 3 uint8 RGB image of `inst_map`'s pixels, `mpp` their size in microns (None: the
    ring's width in pixels is unknown and its features are NaN). Ids absent from the map get
    NaNs."""
    labels = np.asarray(inst_map)
    rgb = np.asarray(image)
    if rgb.shape != (*labels.shape, 3) or rgb.dtype != np.uint8:
        raise HoverNetError(
            f"colour features: the image has shape {rgb.shape} and dtype {rgb.dtype}, the "
            f"instance map shape {labels.shape}; pass the uint8 RGB pixels of the map"
        )
    wanted = np.array(sorted({int(i) for i in nuclei}), dtype=np.int64)
    values = np.full((len(wanted), len(FEATURES)), np.nan)
    present = wanted[(wanted > 0) & (wanted <= (labels.max() if labels.size else 0))]
    if len(present):
        crop = _crop(labels, present, mpp, ring_um)
        labels = labels[crop]
        rgb = rgb[crop]
        n_labels = int(labels.max()) + 1
        position = np.full(n_labels, -1, np.intp)  # row of each wanted id in `values`
        position[wanted[wanted < n_labels]] = np.flatnonzero(wanted < n_labels)
        flat = labels.ravel()
        idx = np.flatnonzero(flat)
        rows = position[flat[idx]]
        keep = rows >= 0
        idx, rows = idx[keep], rows[keep]
        h, e = _stains(rgb.reshape(-1, 3)[idx])
        columns = [_stats(h, rows, len(wanted)), _stats(e, rows, len(wanted))]
        if mpp:
            ring = ring_labels(labels, ring_um / mpp).ravel()
            ridx = np.flatnonzero(ring)
            rrows = position[ring[ridx]]
            pixels = rgb.reshape(-1, 3)[ridx]
            r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
            keep = (rrows >= 0) & (_OD[r] + _OD[g] + _OD[b] >= GLASS_OD)  # wanted, not glass
            rrows = rrows[keep]
            columns += [_stats(v, rrows, len(wanted)) for v in _stains(pixels[keep])]
        else:
            columns += [np.full((len(wanted), 5), np.nan)] * 2
        texture = _glcm_features(labels, idx, rows, h, len(wanted))
        values = np.concatenate([*columns, texture], axis=1)
    names = list(FEATURES)
    return {
        i: dict(zip(names, row, strict=True))
        for i, row in zip(wanted.tolist(), values.tolist(), strict=True)
    }


def _crop(
    labels: np.ndarray, ids: np.ndarray, mpp: float | None, ring_um: float
) -> tuple[slice, slice]:
    """The part of the map that the nuclei `ids`, their rings and every nucleus that could be
    nearer to a ring pixel lie in: their box grown by twice the ring width."""
    lut = np.zeros(int(labels.max()) + 1, bool)
    lut[ids] = True
    mask = lut[labels]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    grow = int(np.ceil(2 * ring_um / mpp)) + 2 if mpp else 1
    r0, r1 = max(rows[0] - grow, 0), min(rows[-1] + grow + 1, labels.shape[0])
    c0, c1 = max(cols[0] - grow, 0), min(cols[-1] + grow + 1, labels.shape[1])
    return slice(r0, r1), slice(c0, c1)


def _stats(x: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """(n, 5) mean, std, min, max, sum of the values `x` of each row id; NaN without values."""
    count = np.bincount(rows, minlength=n).astype(np.float64)
    # (float64 also without values: bincount of no weights gives integers)
    total = np.bincount(rows, x, minlength=n).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = np.bincount(rows, (x - mean[rows]) ** 2, minlength=n) / count
    low = np.full(n, np.inf)
    high = np.full(n, -np.inf)
    np.minimum.at(low, rows, x)
    np.maximum.at(high, rows, x)
    empty = count == 0
    low[empty] = high[empty] = total[empty] = np.nan
    return np.stack([mean, np.sqrt(var), low, high, total], axis=1)


def _glcm_features(
    labels: np.ndarray, idx: np.ndarray, rows: np.ndarray, h: np.ndarray, n: int
) -> np.ndarray:
    """(n, 3) GLCM contrast, homogeneity and entropy of the haematoxylin OD `h` of the pixels
    `idx` (flat indices into `labels`) of the wanted nuclei (`rows`: their row of n)."""
    height, width = labels.shape
    padded = np.pad(labels, 1)
    flat = padded.ravel()
    idx = idx + (idx // width) * 2 + width + 3  # the same pixels in the padded map
    lab = flat[idx]
    level = np.minimum((h * (GLCM_LEVELS / GLCM_OD_MAX)).astype(np.intp), GLCM_LEVELS - 1)
    grey = np.zeros(len(flat), np.intp)
    grey[idx] = level
    sums = np.zeros((3, n))
    directions = np.zeros(n)
    cells = GLCM_LEVELS * GLCM_LEVELS
    for dr, dc in GLCM_OFFSETS:
        other = idx + dr * (width + 2) + dc
        pair = flat[other] == lab
        i, j, r = level[pair], grey[other[pair]], rows[pair]
        pairs = np.bincount(r, minlength=n).astype(np.float64)
        d2 = (i - j).astype(np.float64) ** 2
        # the symmetric matrix counts each pair as (i, j) and (j, i): the same contrast and
        # homogeneity; for the entropy, count unordered pairs u: 2u / 2N in both cells off
        # the diagonal, 2u / 2N in its one cell on it
        with np.errstate(invalid="ignore", divide="ignore"):
            contrast = np.bincount(r, d2, minlength=n) / pairs
            homogeneity = np.bincount(r, 1 / (1 + d2), minlength=n) / pairs
        low, high = np.minimum(i, j), np.maximum(i, j)
        counts = np.bincount(r * cells + low * GLCM_LEVELS + high, minlength=n * cells)
        cell = np.flatnonzero(counts)
        owner = cell // cells
        diagonal = (cell // GLCM_LEVELS) % GLCM_LEVELS == cell % GLCM_LEVELS
        u = counts[cell].astype(np.float64)
        p = np.where(diagonal, u, u / 2) / pairs[owner]  # each of its cells' probability
        terms = np.where(diagonal, 1.0, 2.0) * -p * np.log(p)
        entropy = np.bincount(owner, terms, minlength=n)
        has = pairs > 0
        directions += has
        sums += np.where(has, np.stack([contrast, homogeneity, entropy]), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / directions).T
