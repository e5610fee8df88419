"""HoVer-Net training targets: the horizontal/vertical (HV) distance map and the nucleus (NP) map.

Definition (the original project's ``gen_targets``, reproduced exactly):

1. Instances split into several 4-connected pieces (e.g. by augmentation) become separate
   instances.
2. Only instances with at least ``min_size`` (30) pixels inside the centre crop get an HV target;
   smaller ones still count in the NP map.
3. For each instance, over the WHOLE input map (not only the crop): the bounding box widened by
   2 px, the centre of mass inside that box rounded to a pixel, and per pixel the column (x) and
   row (y) offsets ``index_in_box + 1 - round(com)``. Negative offsets are divided by the largest
   negative magnitude and positive ones by the largest positive value, so each side spans
   [-1, 0) and (0, 1] separately.
4. Both maps are centre-cropped to ``out_shape``.

The original skips every instance whose box starts within 2 px of the top or left edge of the
input map (a negative slice start); ``legacy_edge=True`` keeps that quirk for bit-exact targets,
the default gives those nuclei their normal target. Away from that edge both agree exactly.

This module computes everything with per-label reductions (``find_objects`` and ``bincount``)
instead of a per-instance scan of the map: see benchmarks/bench_targets.py for the speed-up.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_pieces

from hovernet.config import area_at_mpp
from hovernet.errors import HoverNetError

MIN_SIZE = 30  # pixels inside the crop below which an instance gets no HV target (original)
BOX_PAD = 2  # the original widens each bounding box by 2 px before taking the centre of mass


def crop_center(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop of the first two axes, with the original's offset rounding (floor)."""
    h0 = (array.shape[0] - shape[0]) // 2
    w0 = (array.shape[1] - shape[1]) // 2
    return array[h0 : h0 + shape[0], w0 : w0 + shape[1]]


def _check(inst_map: np.ndarray, out_shape: tuple[int, int]) -> tuple[int, int]:
    if inst_map.ndim != 2:
        raise HoverNetError(
            f"instance map must be 2-D (H x W), got shape {inst_map.shape}: pass one label map"
        )
    if not (np.issubdtype(inst_map.dtype, np.integer) or inst_map.dtype == bool):
        raise HoverNetError(
            f"instance map must hold integer ids, got dtype {inst_map.dtype}: convert it with "
            ".astype(np.int32)"
        )
    oh, ow = (int(v) for v in out_shape)
    if not (0 < oh <= inst_map.shape[0] and 0 < ow <= inst_map.shape[1]):
        raise HoverNetError(
            f"output shape {(oh, ow)} must fit inside the instance map {inst_map.shape}: "
            "pass the network's output size"
        )
    if inst_map.size and inst_map.min() < 0:
        raise HoverNetError("instance map has negative ids: use 0 for background and 1..N")
    return oh, ow


def _normalised_offset(offset: np.ndarray, neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """offset (int) -> float32 in [-1, 1]: negatives / neg, positives / pos, as the original.

    Division is done in float32 like the original, so values agree to the last bit.
    """
    out = offset.astype(np.float32)
    below = offset < 0
    above = offset > 0
    out[below] /= neg[below].astype(np.float32)
    out[above] /= pos[above].astype(np.float32)
    return out


def _boxes(pieces: np.ndarray, ids: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """(rmin, rmax, cmin, cmax) of the bounding box of each id in `ids` (ascending), indexed by
    id in arrays of `size` (0 for the others); maxima inclusive."""
    boxes = ndimage.find_objects(pieces, max_label=int(ids[-1]))
    rmin = np.zeros(size, np.int64)
    cmin = np.zeros(size, np.int64)
    rmax = np.zeros(size, np.int64)
    cmax = np.zeros(size, np.int64)
    for i in ids:  # O(number of instances), no pixel work
        rs, cs = boxes[i - 1]
        rmin[i], rmax[i], cmin[i], cmax[i] = rs.start, rs.stop - 1, cs.start, cs.stop - 1
    return rmin, rmax, cmin, cmax


def min_size_for_mpp(mpp: float | None) -> int:
    """`MIN_SIZE` for patches at `mpp` um/px: the same area (30 px at 40x = 1.9 um^2), 8 px at
    0.5 um/px; None (resolution unknown): the original's 30.

    Unscaled, the 30 px would leave every nucleus under 7.5 um^2 without an HV target at 20x:
    38 % of the CoNSeP validation nuclei, which the network then learns to give no centre.
    Post-processing perfect maps at 20x (`scripts/bundled_model/oracle_maps.py`) scores CoNSeP
    PQ 0.701 with 30 px targets and 0.771 with 8 px (docs/model-card.md)."""
    return MIN_SIZE if mpp is None else area_at_mpp(MIN_SIZE, mpp)


def hv_targets(
    inst_map: np.ndarray,
    out_shape: tuple[int, int],
    *,
    min_size: int = MIN_SIZE,
    legacy_edge: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """HV and NP targets for one instance map, centre-cropped to ``out_shape``.

    Args:
        inst_map: H x W integer instance ids (0 = background), the network INPUT-sized map
            (e.g. 270 x 270 after augmentation): instances are measured over the whole map.
        out_shape: (h, w) of the network output, e.g. (80, 80) or (164, 164).
        min_size: instances with fewer pixels inside the crop get no HV target (original: 30).
        legacy_edge: True reproduces the original's skipping of instances whose bounding box
            starts within 2 px of the top or left edge of ``inst_map``.

    Returns:
        hv: h x w x 2 float32, channel 0 horizontal (x), channel 1 vertical (y), in [-1, 1].
        np_map: h x w uint8, 1 on every nucleus pixel.
    """
    inst_map = np.asarray(inst_map)
    oh, ow = _check(inst_map, out_shape)
    hv = np.zeros((oh, ow, 2), np.float32)
    np_map = (crop_center(inst_map, (oh, ow)) > 0).astype(np.uint8)
    if not np_map.any():
        return hv, np_map

    # 1. every 4-connected piece of one id becomes its own instance
    pieces = label_pieces(inst_map, background=0, connectivity=1)
    crop = crop_center(pieces, (oh, ow))

    # 2. instances large enough inside the crop
    area_in_crop = np.bincount(crop.ravel(), minlength=int(pieces.max()) + 1)
    keep = area_in_crop >= min_size
    keep[0] = False

    # 3. per-instance box and centre of mass over the whole map (only ids seen in the crop)
    ids = np.flatnonzero(keep)
    if ids.size == 0:
        return hv, np_map
    rmin, rmax, cmin, cmax = _boxes(pieces, ids, keep.size)
    if legacy_edge:
        keep[(rmin < BOX_PAD) | (cmin < BOX_PAD)] = False
        keep[0] = False

    height, width = pieces.shape
    rows, cols = np.nonzero(pieces)  # nucleus pixels only
    lab = pieces[rows, cols]
    count = np.bincount(lab, minlength=keep.size)[: keep.size].astype(np.float64)
    row_sum = np.bincount(lab, weights=rows, minlength=keep.size)[: keep.size]
    col_sum = np.bincount(lab, weights=cols, minlength=keep.size)[: keep.size]
    with np.errstate(divide="ignore", invalid="ignore"):
        # centre of mass relative to the widened box, exactly as the original computes it
        com_r = (row_sum - count * (rmin - BOX_PAD)) / count
        com_c = (col_sum - count * (cmin - BOX_PAD)) / count
    com_r = np.floor(np.nan_to_num(com_r) + 0.5).astype(np.int64)
    com_c = np.floor(np.nan_to_num(com_c) + 0.5).astype(np.int64)

    # offset of a pixel = index in widened box + 1 - rounded centre of mass
    # -> most negative at the first row/column (rmin), most positive at the last one (rmax)
    base_r = rmin - BOX_PAD - 1 + com_r  # offset = row - base_r
    base_c = cmin - BOX_PAD - 1 + com_c
    neg_r, pos_r = base_r - rmin, rmax - base_r
    neg_c, pos_c = base_c - cmin, cmax - base_c

    # 4. fill the crop only
    h0 = (height - oh) // 2
    w0 = (width - ow) // 2
    yy, xx = np.nonzero(keep[crop])
    lab = crop[yy, xx]
    hv[yy, xx, 0] = _normalised_offset(xx + w0 - base_c[lab], neg_c[lab], pos_c[lab])
    hv[yy, xx, 1] = _normalised_offset(yy + h0 - base_r[lab], neg_r[lab], pos_r[lab])
    return hv, np_map
