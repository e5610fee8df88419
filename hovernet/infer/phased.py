"""Sub-pixel phases, in one place below tile mode, slide mode and `predict_phases_many`.

An image finer than the network can be run at several sub-pixel shifts of itself (its phases,
`resample.phase_offsets`), whose maps are averaged back at the image's pixels
(`maps.merge_phase_maps`). `Phases` says how an image is shown to the network (resampled by
`zoom`, at `offsets`); `PhasedStream` turns a stream of (key, image) into the network's inputs,
each image's phases in order, and the maps of those inputs back into each image's merged maps.
The front ends only say how many phases (and at what zoom); they never see a single phase.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hovernet.infer import resample
from hovernet.infer.maps import PhaseCollector, PredMaps, merge_phase_maps

# (key, image at the input's pixels, its merged maps, the merged nucleus probability at the
# image's pixels with several phases, else None)
Merged = tuple[Any, np.ndarray, PredMaps, "np.ndarray | None"]
# what a front end makes of an image's merged maps: (job, bytes it holds), as `run_engine` wants
MakeJob = Callable[[Any, np.ndarray, PredMaps, "np.ndarray | None"], tuple[Any, int]]


@dataclass(frozen=True)
class Phases:
    """How the network sees an image: resampled by `zoom` (network pixels per image pixel;
    None: as it is) at each of the sub-pixel shifts `offsets` ((dy, dx) image pixels, (0, 0)
    first: one phase is just the image)."""

    offsets: tuple[tuple[int, int], ...] = ((0, 0),)
    zoom: float | None = None

    def __post_init__(self) -> None:
        if not self.offsets or tuple(self.offsets[0]) != (0, 0):
            raise ValueError(f"phase offsets must start with (0, 0), got {self.offsets}")
        if self.zoom is not None and not self.zoom > 0:
            raise ValueError(f"the phases' zoom must be positive, got {self.zoom}")

    @classmethod
    def of(cls, zoom: float | None, phases: int | None) -> Phases:
        """`phases` (1, 2, 4; None: 1) of images resampled by `zoom` (a HoverNetError where
        the images are not fine enough for them: `resample.phase_offsets`)."""
        return cls(tuple(resample.phase_offsets(zoom, phases)), zoom)

    @property
    def n(self) -> int:
        return len(self.offsets)

    def inputs(self, image: np.ndarray) -> Iterator[np.ndarray]:
        """The network's input for each phase (one phase at zoom None: `image` itself)."""
        return resample.phase_inputs(image, list(self.offsets), self.zoom)

    def network_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(height, width) of each phase's input for an image of `shape`."""
        return resample.model_shape(shape, self.zoom)


class PhasedStream:
    """Each image's phases out (`inputs`), each image's merged maps back (`merged`): the maps of
    an image's phases arrive in order, and its last phase completes it."""

    def __init__(self, phases: Phases):
        self.phases = phases
        self._images: dict[Any, np.ndarray] = {}  # images whose phases are in flight
        self._maps = PhaseCollector(phases.n)

    def inputs(self, items: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, np.ndarray]]:
        """(key, network input) for each phase of each (key, image) of `items`, in order."""
        for key, image in items:
            self._images[key] = image
            for phase in self.phases.inputs(image):
                yield key, phase

    def merged(self, key: Any, maps: PredMaps) -> Merged | None:
        """`key`'s image and merged maps once `maps` is its last phase's, else None."""
        done = self._maps.add(key, maps)
        if done is None:
            return None
        image = self._images.pop(key)
        if len(done) == 1:
            return key, image, done[0], None
        merged, prob = merge_phase_maps(done, list(self.phases.offsets), image.shape)
        return key, image, merged, prob

    def make_job(self, make_job: MakeJob) -> Callable[[Any, np.ndarray, PredMaps], tuple]:
        """`run_engine`'s make_job for the phase inputs: (None, 0) until an image's last phase,
        then `make_job(key, image, maps, prob)` of its merged maps."""

        def phased(key: Any, _input: np.ndarray, maps: PredMaps) -> tuple[Any, int]:
            done = self.merged(key, maps)
            return (None, 0) if done is None else make_job(*done)

        return phased


def phased_stream(
    predict: Callable[[Iterable[tuple[Any, np.ndarray]]], Iterable[tuple[Any, Any, PredMaps]]],
    items: Iterable[tuple[Any, np.ndarray]],
    phases: Phases,
) -> Iterator[Merged]:
    """(key, image, merged maps, probability or None) for each (key, image) of `items`, in
    order; `predict` is the network over a stream of (key, input) (`predict_stream`)."""
    stream = PhasedStream(phases)
    for key, _, maps in predict(stream.inputs(items)):
        done = stream.merged(key, maps)
        if done is not None:
            yield done
