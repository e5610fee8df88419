"""Network maps -> nuclei at the input's pixels (pure numpy: arrays in, arrays out; no torch, so
post-processing workers start without importing it). The network's logits become maps in
`hovernet.model.inference.logits_to_maps`.

The maps follow the original's layout: `pred_map` is H x W x 4 = [type id (arg-max of the type
softmax, as float), nucleus probability, h, v] for a typed model and H x W x 3 = [nucleus
probability, h, v] without type branch; `type_softmax` (H x W x nr_types) is kept beside it.

- `to_pred_maps`: stitched channels -> `PredMaps` in the original's layout;
- `merge_phase_maps` and `PhaseCollector`: the maps of an image's sub-pixel phases averaged;
- `maps_to_nuclei`: maps -> (instance map, nucleus records) at the input's pixels. Tile mode,
  slide mode and `segment_image` all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hovernet.infer import resample
from hovernet.infer.postprocess import Ranges, postprocess


@dataclass
class PredMaps:
    """Stitched network maps of one image (see the module docstring for the layout)."""

    pred_map: np.ndarray
    type_softmax: np.ndarray | None

    @property
    def prob(self) -> np.ndarray:
        """The nucleus probability channel."""
        return self.pred_map[..., -3]  # [type,] probability, h, v


def to_pred_maps(channels: np.ndarray, typed: bool) -> PredMaps:
    """H x W x (3 + C) [np, h, v, softmax] -> the original's pred_map layout + the softmax."""
    if not typed:
        return PredMaps(np.ascontiguousarray(channels), None)
    softmax = np.ascontiguousarray(channels[..., 3:])
    type_id = np.argmax(softmax, axis=-1).astype(np.float32)[..., None]
    return PredMaps(np.concatenate([type_id, channels[..., :3]], axis=-1), softmax)


def merge_phase_maps(
    phase_maps: list[PredMaps], offsets: list[tuple[int, int]], shape: tuple[int, ...]
) -> tuple[PredMaps, np.ndarray]:
    """The maps of an image's phases (`resample.phase_offsets`) -> (maps on the first phase's
    network grid, nucleus probability at the image's pixels or at the network's).

    One phase: its maps as they are and their probability. Several: probability, h, v and the
    type softmax are averaged at the image's pixels (`resample.merge_phases`), area-averaged
    back to the network grid for post-processing, and the type ids taken from the averaged
    softmax; the probability at the image's pixels is what outlines are refined to.
    """
    first = phase_maps[0]
    if len(phase_maps) == 1:
        return first, first.prob
    typed = first.type_softmax is not None

    def channel(maps: PredMaps, c: int) -> np.ndarray:  # [probability, h, v, softmax...]
        return maps.pred_map[..., c - 3] if c < 3 else maps.type_softmax[..., c - 3]

    # one channel at a time: all channels at the image's resolution at once took 1,857 MiB
    # at the peak for a 3,900 px slide region with 5 types, this takes 421 MiB (tracemalloc)
    grid = first.pred_map.shape[:2]
    n_channels = 3 + (first.type_softmax.shape[2] if typed else 0)
    coarse = np.empty((*grid, n_channels), np.float32)
    for c in range(n_channels):
        fine = resample.merge_phases([channel(m, c) for m in phase_maps], offsets, shape)[..., 0]
        coarse[..., c] = resample.resize(fine, grid)
        if c == 0:
            prob = fine
    return to_pred_maps(coarse, typed), prob


class PhaseCollector:
    """Holds the maps of each image's (or region's) phases, which arrive in order, until the
    last of its `n` phases arrives."""

    def __init__(self, n: int):
        self.n = n
        self._maps: dict[Any, list[PredMaps]] = {}

    def is_first(self, key: Any) -> bool:
        """Whether no phase of `key` has arrived yet."""
        return key not in self._maps

    def add(self, key: Any, maps: PredMaps) -> list[PredMaps] | None:
        """All of `key`'s phase maps once its last phase arrives, else None."""
        done = self._maps.setdefault(key, [])
        done.append(maps)
        return self._maps.pop(key) if len(done) == self.n else None


def maps_to_nuclei(
    maps: PredMaps,
    nr_types: int | None,
    maps_mpp: float | None,
    shape: tuple[int, ...],
    prob: np.ndarray | None = None,
    ranges: Ranges | None = None,
) -> tuple[np.ndarray, dict[int, dict]]:
    """The HV watershed on `maps` (at `maps_mpp`, which scales its constants; `ranges`: fixed
    normalisation extremes, see `postprocess`), then the instance map and records mapped to an input
    of `shape` (`resample.nuclei_to_input`), outlines refined to `prob` (merged phases: the
    probability at the input's pixels; None: the maps' own)."""
    inst_map, nuclei = postprocess(maps.pred_map, nr_types, maps.type_softmax, maps_mpp, ranges)
    return resample.nuclei_to_input(inst_map, nuclei, shape, maps.prob if prob is None else prob)
