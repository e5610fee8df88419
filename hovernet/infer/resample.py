"""Tiles at another resolution than the model's: resample in, map the results back out.

Pure functions (arrays in, arrays out) used by tile inference (`--input_mpp`, `--proc_mpp`):

- `resolution_zoom`: the *zoom*, network pixels per input pixel (input um/px over the
  network's um/px), or None when the input is taken as it is;
- `to_model_resolution`: the image resampled by that factor (area averaging when shrinking,
  bilinear when enlarging);
- `labels_to_input`: a label map back to the input's exact size by nearest neighbour, pixel
  centres aligned, so each input pixel takes the label of the network pixel it lies in and no
  new labels appear (2x exactly: every label pixel becomes a 2 x 2 block);
- `refine_to_foreground`: enlarged labels trimmed and grown to the enlarged (bilinear)
  nucleus probability >= 0.5, so outlines follow the probability instead of the network's
  pixel grid;
- `nuclei_to_input`: the instance map and records in input pixels, the records (bbox, centroid,
  contour) re-derived from the mapped-back map by `hovernet.infer.postprocess.instance_records`
  and the type fields kept from the network-resolution records;
- `maps_to_input`: the network maps (pred_map) resampled to the input's size;
- `phase_offsets`, `shift_image`, `phase_inputs`, `merge_phases`: sub-pixel phases. When the
  input is at least 1.5x finer than the network, shrinking it throws away where within a network
  pixel an edge lies. Running the network on the input shifted by half a network pixel (rounded
  to whole input pixels) in y, x or both, and averaging the maps back at the input's pixels,
  recovers it: measured with the bundled 0.5 um/px model on 40x validation images held out from
  its training, 4 phases gave PQ +0.006 on 3 MoNuSeg tiles and +0.007 on 80 CoNSeP crops over
  one phase, 2 (diagonal) +0.0055 and +0.006, while averaging 4 flips of one phase gave +0.000.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np

from hovernet.errors import HoverNetError
from hovernet.infer.postprocess import FOREGROUND_THRESHOLD, instance_records


def check_mpp(value: float | None, name: str) -> float | None:
    """None or a positive finite number of microns per pixel, else a HoverNetError."""
    if value is None:
        return None
    try:
        ok = math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise HoverNetError(
            f"{name} must be a positive number of microns per pixel (e.g. 0.25 at 40x, 0.5 at "
            f"20x), got {value!r}"
        )
    return float(value)


def model_mpp(model) -> float | None:
    """The resolution (um/px) a model was trained at, from `model.meta`, None where unknown."""
    return getattr(getattr(model, "meta", None), "mpp", None)


def resolution_zoom(
    input_mpp: float | None,
    model_mpp: float | None,
    proc_mpp: float | None = None,
    source: str = "the model",
) -> float | None:
    """Input pixels -> network pixels: input_mpp / (proc_mpp, else model_mpp); None = as is.

    No `input_mpp` means the input is at the network's resolution already. An `input_mpp` with
    neither `proc_mpp` nor a model resolution is a HoverNetError naming `source`.
    """
    input_mpp = check_mpp(input_mpp, "--input_mpp")
    proc_mpp = check_mpp(proc_mpp, "--proc_mpp")
    target = proc_mpp if proc_mpp is not None else model_mpp
    if input_mpp is None:
        return None
    if target is None:
        raise HoverNetError(
            f"{source} does not record the resolution it was trained at, so the input "
            f"({input_mpp} um/px) cannot be matched to it: give the resolution to run the "
            "network at with --proc_mpp (e.g. 0.25), or leave out --input_mpp to use the "
            "images as they are"
        )
    return input_mpp / check_mpp(target, f"the resolution of {source}")


def resolution_note(
    input_mpp: float | None, model_mpp: float | None, proc_mpp: float | None = None
) -> str | None:
    """One line saying what resolution the input is taken to be at, or None (nothing known)."""
    target = proc_mpp if proc_mpp is not None else model_mpp
    if target is None:
        return None
    whose = "the processing resolution" if proc_mpp is not None else "the model's resolution"
    if input_mpp is None:
        return (
            f"input images are assumed to be at {whose}, {target:g} um/px; "
            "give --input_mpp if they are not (e.g. --input_mpp 0.25 for 40x)"
        )
    if input_mpp == target:
        return f"input images at {input_mpp:g} um/px, {whose}: no resampling"
    return (
        f"input images at {input_mpp:g} um/px are resampled to {whose}, {target:g} um/px, "
        "for the network; all outputs are in the input images' pixels"
    )


def model_shape(shape: tuple[int, ...], zoom: float | None) -> tuple[int, int]:
    """(height, width) of an image of `shape` resampled by `zoom` (at least 1 x 1)."""
    height, width = int(shape[0]), int(shape[1])
    if zoom is None:
        return height, width
    return max(1, round(height * zoom)), max(1, round(width * zoom))


def resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (either side), bilinear when enlarging."""
    height, width = shape
    shrink = height < array.shape[0] or width < array.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interpolation)


def to_model_resolution(image: np.ndarray, zoom: float | None) -> np.ndarray:
    """The H x W x 3 image resampled by `zoom` (the same array when its size would not change)."""
    shape = model_shape(image.shape, zoom)
    if shape == tuple(image.shape[:2]):
        return image
    out = resize(np.ascontiguousarray(image), shape)
    return out.reshape(*shape, *image.shape[2:])


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    """For each of `dst` output pixels, the source pixel whose extent holds its centre."""
    index = np.floor((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64)
    return np.minimum(index, src - 1)


def labels_to_input(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A label map (or any array, first two axes) resized to `shape[:2]` by nearest neighbour."""
    height, width = int(shape[0]), int(shape[1])
    if labels.shape[:2] == (height, width):
        return labels
    rows = _nearest_indices(labels.shape[0], height)
    cols = _nearest_indices(labels.shape[1], width)
    return labels[rows[:, None], cols[None, :]]


def refine_to_foreground(labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Enlarged labels (`labels_to_input`) made to follow the enlarged nucleus probability.

    `prob` is the network's nucleus probability, already resized to the labels' size
    (bilinear). Pixels under the post-processing's foreground threshold (0.5) lose their
    label, foreground pixels next to a label (1 px) gain it, so an outline is no longer a
    staircase of network pixels. A nucleus that would lose every pixel keeps its enlarged
    ones: every nucleus survives. Measured with the bundled 0.5 um/px model on 40x
    validation images held out from its training: PQ +0.006 on 3 MoNuSeg tiles (SQ +0.004)
    and +0.006 on 80 CoNSeP crops (SQ +0.010).
    """
    from skimage.segmentation import expand_labels

    fg = prob >= FOREGROUND_THRESHOLD
    refined = expand_labels(np.where(fg, labels, 0), distance=1) * fg
    kept = np.zeros(int(labels.max()) + 1, dtype=bool)
    kept[refined.ravel()] = True
    lost = ~kept[labels]
    refined[lost] = labels[lost]  # label 0 is never "kept": background stays 0
    return refined.astype(labels.dtype, copy=False)


PHASES = (1, 2, 4)
PHASE_MIN_SHRINK = 1.5  # phases only where a network pixel spans at least this many input px


def check_phases(phases: int | None) -> int | None:
    """None (automatic) or one of `PHASES`, else a HoverNetError."""
    if phases is not None and phases not in PHASES:
        raise HoverNetError(f"--phases must be one of {', '.join(map(str, PHASES))}, got {phases}")
    return phases


def phase_offsets(zoom: float | None, phases: int | None = None) -> list[tuple[int, int]]:
    """(dy, dx) input-pixel shifts of the phases the network runs at, (0, 0) first.

    `zoom` is `resolution_zoom`'s (network pixels per input pixel). `phases`: 1 (also None,
    the default); 2 (no shift and a diagonal one); 4 (every combination of a shift in y and in
    x), for inputs at least `PHASE_MIN_SHRINK` x finer than the network. A shift is half a
    network pixel rounded to whole input pixels. The default is one phase: on the MoNuSeg test
    split at 40x, 2 phases cost 1.4x the time for PQ +0.003 and 4 phases 1.9x for +0.004
    (docs/model-card.md), not worth doubling every run's time. Asking for 2 or 4 where the
    input is not that much finer is a HoverNetError that says how to run.
    """
    check_phases(phases)
    finer = zoom is not None and 1 / zoom >= PHASE_MIN_SHRINK
    if phases is None:
        phases = 1
    if phases == 1:
        return [(0, 0)]
    if not finer:
        where = (
            "are taken to be at the network's resolution"
            if zoom is None
            else f"are only {1 / zoom:.3g}x as fine"
        )
        raise HoverNetError(
            f"--phases {phases} needs images at least {PHASE_MIN_SHRINK:g}x finer than the "
            f"network (e.g. 40x, 0.25 um/px, with a 0.5 um/px model); these {where}: use "
            "--phases 1"
        )
    d = max(1, round(0.5 / zoom))
    return [(0, 0), (d, d)] if phases == 2 else [(0, 0), (0, d), (d, 0), (d, d)]


def shift_image(image: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """The image moved up by dy and left by dx pixels (same size; the last rows and columns
    repeat the edge): pixel (y, x) of the result is pixel (y + dy, x + dx) of `image`."""
    dy, dx = offset
    if (dy, dx) == (0, 0):
        return image
    pad = ((0, dy), (0, dx)) + ((0, 0),) * (image.ndim - 2)
    return np.ascontiguousarray(np.pad(image, pad, mode="edge")[dy:, dx:])


def phase_inputs(
    image: np.ndarray, offsets: list[tuple[int, int]], zoom: float | None
) -> Iterator[np.ndarray]:
    """The network's input for each phase: the image shifted by the offset, resampled by
    `zoom` (`to_model_resolution`), one at a time."""
    for offset in offsets:
        yield to_model_resolution(shift_image(image, offset), zoom)


def merge_phases(
    maps: list[np.ndarray], offsets: list[tuple[int, int]], shape: tuple[int, ...]
) -> np.ndarray:
    """The mean of the phases' H' x W' x C network maps, each resampled (bilinear) to the
    input's `shape[:2]` at the position its shifted input had: an H x W x C float32 array.

    Map `k` is the network's output for `to_model_resolution(shift_image(image, offsets[k]))`;
    its pixel centres lie at input coordinates `offset + (i + 0.5) * (H / H') - 0.5`.
    """
    height, width = int(shape[0]), int(shape[1])
    total = None
    for array, (dy, dx) in zip(maps, offsets, strict=True):
        array = np.ascontiguousarray(array, dtype=np.float32)
        sy, sx = array.shape[0] / height, array.shape[1] / width
        # output pixel -> map coordinates (the inverse map warpAffine takes)
        to_map = np.float32([[sx, 0, (0.5 - dx) * sx - 0.5], [0, sy, (0.5 - dy) * sy - 0.5]])
        placed = cv2.warpAffine(
            array,
            to_map,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        ).reshape(height, width, -1)
        total = placed if total is None else total + placed
    return total / len(maps)


def nuclei_to_input(
    inst_map: np.ndarray,
    nuclei: dict[int, dict],
    shape: tuple[int, ...],
    prob: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, dict]]:
    """The network-resolution instance map and records -> the same in input pixels.

    The map is `labels_to_input`, refined by `refine_to_foreground` when the input is finer
    than the network and `prob` (the nucleus probability, at the network's resolution or
    already at the input's, as `merge_phases` gives it) is given;
    bbox, centroid and contour are re-derived from it by
    `instance_records`, and `type`, `type_prob` and `type_probs` are kept from `nuclei` (they
    were voted at the network's resolution). Ids are unchanged when every nucleus survives
    (always when the input is finer than the network); nuclei that vanish when the input is
    coarser are dropped and the rest renumbered 1..N in the same order.
    """
    if inst_map.shape[:2] == tuple(shape[:2]):
        return inst_map, nuclei
    mapped = labels_to_input(inst_map, shape)
    if prob is not None and shape[0] >= inst_map.shape[0] and shape[1] >= inst_map.shape[1]:
        prob = np.asarray(prob, np.float32)
        if prob.shape[:2] != tuple(shape[:2]):
            prob = resize(prob, shape[:2])
        mapped = refine_to_foreground(mapped, prob)
    relabelled, records = instance_records(mapped)
    old_of = np.zeros(len(records) + 1, dtype=np.int64)
    old_of[relabelled.ravel()] = mapped.ravel()
    for new_id, record in records.items():
        old = nuclei[int(old_of[new_id])]
        for key in ("type", "type_prob", "type_probs"):
            if key in old:
                record[key] = old[key]
    return relabelled, records


def maps_to_input(pred_map: np.ndarray, shape: tuple[int, ...], typed: bool) -> np.ndarray:
    """The H x W x C network maps resampled to `shape[:2]`: probability and h/v maps by
    `resize`; the arg-max type channel of a typed `pred_map` (channel 0) by nearest neighbour."""
    height, width = int(shape[0]), int(shape[1])
    if pred_map.shape[:2] == (height, width):
        return pred_map
    out = resize(np.ascontiguousarray(pred_map, dtype=np.float32), (height, width))
    out = out.reshape(height, width, pred_map.shape[2])
    if typed:
        out[..., 0] = labels_to_input(pred_map[..., 0], (height, width))
    return out
