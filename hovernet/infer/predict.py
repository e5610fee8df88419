"""Streaming prediction: RGB images of any size -> stitched network maps -> nuclei.

- `predict_stream`: a stream of (key, image) -> (key, image, `PredMaps`) in order; windows of
  consecutive images share batches, so many small tiles still fill a batch;
- `predict_maps`: the maps of one image;
- `segment_image`: one image -> (instance map, nuclei, pred_map), the public one-image API.

Each batch runs through the backend chosen for the model (`hovernet.infer.backends.use_backend`),
else PyTorch with autocast per `precision`. Everything between the image and its finished maps
stays on the model's device: the padded image goes up once (pinned, non-blocking on CUDA), the
windows are cut there, each batch's outputs are placed into the image's maps there (two tensors
of the image's exact size: [type id, probability, h, v] and the type softmax), the type ids are
taken there, and the finished maps come down once per image, on a side stream while the network
goes on with the next batches (`max_lag` finished images may wait for their copy). On the CPU
the maps are written straight into arrays from `alloc` (the engine's shared memory), so they are
never copied again; the values are those of stitching window by window (`tiling.Stitcher`).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hovernet.config import ModelGeometry
from hovernet.device import autocast_dtype, model_device
from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.infer import resample
from hovernet.infer.backends import backend_of, use_backend
from hovernet.infer.maps import PredMaps, maps_to_nuclei
from hovernet.infer.phased import Phases, phased_stream
from hovernet.infer.tiling import TileGrid
from hovernet.model.inference import logits_to_maps

Alloc = Callable[[tuple[int, ...], Any], np.ndarray]
Select = Callable[[Any, TileGrid], Any]  # (key, grid) -> a bool per window, or None: all


class StageClock:
    """Where the main process spends its time, by stage (profiling): seconds, counts and bytes.
    With `sync` (CUDA: `torch.cuda.synchronize`) each stage waits for its device work, so device
    time counts where it was queued (and nothing overlaps: a profile, not a production run)."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.sync = sync

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.seconds[stage] += time.perf_counter() - start

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n


class _NoClock(StageClock):
    """Times nothing (production runs)."""

    def __call__(self, stage: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def count(self, what: str, n: int = 1) -> None:
        pass


NO_CLOCK = _NoClock()


def network_maps(
    model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None
) -> torch.Tensor:
    """N x S x S x 3 uint8 windows (on the model's device) -> N x s x s x (3 + C) float32
    [np prob, h, v, softmax...] on that device (the backend's run on the CPU)."""
    backend = backend_of(model)
    if backend is not None:
        return torch.from_numpy(backend.run(x.numpy()))
    # NHWC -> NCHW view: its strides are already channels-last, which the convs prefer
    x = x.permute(0, 3, 1, 2).float()
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x)
    return logits_to_maps(out)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on `device` (CUDA: through pinned memory, not waiting)."""
    tensor = torch.from_numpy(array)
    return tensor if device.type != "cuda" else tensor.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class _Target:
    """Where an image's maps are made: their type channels, the device, the host arrays."""

    nr_types: int
    device: torch.device
    alloc: Alloc


class _Image:
    """One image in flight: its padded pixels and its maps being filled, on the device."""

    def __init__(self, key, image, grid: TileGrid, padded, target: _Target):
        self.key, self.image, self.grid, self.padded = key, image, grid, padded
        self.windows = grid.windows()
        self.left = len(self.windows)
        h, w = grid.image_shape
        nr_types, device = target.nr_types, target.device
        self.typed = nr_types > 0
        self.host = device.type == "cpu"  # maps written straight into host arrays

        self.arrays: list[np.ndarray | None] = []  # on the CPU: the host arrays themselves

        def empty(*shape: int) -> torch.Tensor:
            if self.host:
                self.arrays.append(target.alloc(shape, np.float32))
                return torch.from_numpy(self.arrays[-1])
            return torch.empty(shape, dtype=torch.float32, device=device)

        # [type id, prob, h, v] (typed) or [prob, h, v]; the type softmax beside it
        self.pred = empty(h, w, 4 if self.typed else 3)
        self.softmax = empty(h, w, nr_types) if self.typed else None
        self.arrays += [None] * (2 - len(self.arrays)) if self.host else []

    def window(self, index: int) -> torch.Tensor:
        y, x = self.windows[index]
        size = self.grid.input_size
        return self.padded[y : y + size, x : x + size]

    def _square(self, index: int) -> tuple[slice, slice]:
        """Window `index`'s output square in the image, cut where it passes the image."""
        y, x = self.windows[index]
        height, width = self.grid.image_shape
        size = self.grid.output_size
        return slice(y, min(y + size, height)), slice(x, min(x + size, width))

    def place(self, index: int, out: torch.Tensor) -> None:
        """Window `index`'s output square (s x s x (3 + C))."""
        rows, cols = self._square(index)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        first = 1 if self.typed else 0
        self.pred[rows, cols, first:] = out[:h, :w, :3]
        if self.typed:
            self.softmax[rows, cols] = out[:h, :w, 3:]
        self.left -= 1

    def blank(self, index: int) -> None:
        """Window `index` not run: no nucleus there (probability 0, h = v = 0, background)."""
        rows, cols = self._square(index)
        self.pred[rows, cols] = 0
        if self.typed:
            self.softmax[rows, cols] = 0
            self.softmax[rows, cols, 0] = 1
        self.left -= 1

    def finish(self) -> None:
        """The type ids: arg-max of the softmax (the first of equal maxima, as numpy's)."""
        self.padded = None
        if self.typed:
            self.pred[..., 0] = torch.argmax(self.softmax, dim=-1)

    def maps(self, alloc: Alloc, stream=None, ready=None) -> PredMaps:
        """The finished maps as host arrays (CUDA: copied on `stream` once `ready` is)."""
        if self.host:
            self.pred = self.softmax = None
            return PredMaps(*self.arrays)
        out = []
        with torch.cuda.stream(stream):
            stream.wait_event(ready)
            for tensor in (self.pred, self.softmax):
                if tensor is None:
                    out.append(None)
                    continue
                host = alloc(tuple(tensor.shape), np.float32)
                torch.from_numpy(host).copy_(tensor)  # pageable: returns when copied
                out.append(host)
        stream.synchronize()
        self.pred = self.softmax = None
        return PredMaps(*out)


@dataclass(frozen=True)
class StreamOptions:
    """How `predict_stream` runs (see there): windows per batch, autocast precision, the
    network's geometry (None: `model.geometry`), the maps' host arrays (`alloc(shape, dtype)`,
    None: `np.empty`), stage timing, finished images waiting for their copy (CUDA), the windows
    to run (`select`, None: all) and whether batches span images."""

    batch_size: int = 8
    precision: str = "auto"
    geometry: ModelGeometry | None = None
    alloc: Alloc | None = None
    clock: StageClock | None = None
    max_lag: int = 2
    select: Select | None = None
    span: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise HoverNetError(f"batch size must be at least 1, got {self.batch_size}")


def predict_stream(
    model: torch.nn.Module,
    items: Iterable[tuple[Any, np.ndarray]],
    batch_size: int = 8,
    precision: str = "auto",
    **options: Any,
) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
    """Yield (key, image, PredMaps) for each (key, RGB uint8 image), in order.

    Windows of consecutive images share batches. The model runs under `torch.inference_mode`
    on the device of its parameters, with autocast per `precision` (see `autocast_dtype`).
    `options` are `StreamOptions`' other fields, by keyword. `geometry` defaults to
    `model.geometry`; `model.nr_types` (None = untyped) sets the maps.
    `alloc(shape, dtype)` makes the host arrays of the maps (default `np.empty`); `clock`
    times the stages (`StageClock`). A model marked `fixed_batch` (compiled for one shape) gets
    its last batch filled up with copies of its first window, whose outputs are dropped.
    `select(key, grid)` (slide mode: windows near tissue) gives, per window of the image's
    `TileGrid`, whether to run it (None: all); a window not run reads as no nucleus
    (probability 0, h = v = 0, type 0 with softmax 1). With `span=False` an image's windows
    never share a batch with another image's (its last batch may be short): the kernels' work
    split depends on the batch, which can move a value by one float step, so only then are an
    image's maps independent of what came before it (slide mode: a resumed run equals a whole
    one bit for bit). Where `model.stain_norm` is set (`--stain_norm`), the network sees
    `model.stain_norm(image)`; the yielded image is the one given.
    """
    stream = _Stream(model, StreamOptions(batch_size, precision, **options))
    with torch.inference_mode():
        waited = time.perf_counter()
        for key, image in items:
            if stream.clock is not NO_CLOCK:
                stream.clock.seconds["read"] += time.perf_counter() - waited
            yield from stream.add(key, image)
            waited = time.perf_counter()
        yield from stream.close()


class _Stream:
    """`predict_stream`'s state: images with windows still to run (in order), the batch being
    filled, and (CUDA) finished images whose maps are being copied back."""

    def __init__(self, model: torch.nn.Module, opts: StreamOptions):
        self.model, self.opts = model, opts
        self.geometry = opts.geometry or model.geometry
        on = model_device(model) if backend_of(model) is None else torch.device("cpu")
        self.dtype = autocast_dtype(model_device(model), opts.precision)
        self.alloc = opts.alloc or (lambda shape, dt: np.empty(shape, dt))
        self.target = _Target(getattr(model, "nr_types", None) or 0, on, self.alloc)
        self.clock = opts.clock or NO_CLOCK
        self.fixed = bool(getattr(model, "fixed_batch", False))
        self.norm = getattr(model, "stain_norm", None)  # RGB -> RGB; maps keep the image's pixels
        self.copier = torch.cuda.Stream(on) if on.type == "cuda" else None
        self.waiting: deque[_Image] = deque()  # images with windows still to run, in order
        self.finishing: deque[tuple[_Image, Any]] = deque()  # CUDA: done, not yet copied back
        self.batch: list[tuple[_Image, int]] = []

    def add(self, key: Any, image: np.ndarray) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
        """Queue `image`'s windows (running each batch as it fills); yield what is finished."""
        opts, clock = self.opts, self.clock
        image = check_image(image, key)
        grid = TileGrid(image.shape[:2], self.geometry.input_size, self.geometry.output_size)
        with clock("pad"):
            pixels = image if self.norm is None else self.norm(image)
            padded = to_device(grid.pad(pixels), self.target.device)
        state = _Image(key, image, grid, padded, self.target)
        self.waiting.append(state)
        run = opts.select(key, grid) if opts.select is not None else None
        for index in range(len(grid)):
            if run is not None and not run[index]:
                state.blank(index)
                continue
            self.batch.append((state, index))
            if len(self.batch) == opts.batch_size:
                yield from self.flush()
        if self.batch and not opts.span:
            yield from self.flush()
        yield from self.release()  # an image without windows to run (else a no-op)

    def close(self) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
        if self.batch:
            yield from self.flush()
        yield from self.drain(force=True)

    def flush(self) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
        """Run the batch and place its outputs."""
        clock, batch = self.clock, self.batch
        with clock("cut"):
            views = [state.window(index) for state, index in batch]
            views += views[:1] * (self.opts.batch_size - len(views) if self.fixed else 0)
            x = torch.stack(views)
        with clock("network"):
            outputs = network_maps(self.model, x, self.dtype)
        with clock("stitch"):
            for (state, index), output in zip(batch, outputs, strict=False):
                state.place(index, output)
        clock.count("windows", len(batch))
        batch.clear()
        yield from self.release()

    def release(self) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
        """The images at the head of the queue whose windows are all done, in order."""
        while self.waiting and self.waiting[0].left == 0:
            state = self.waiting.popleft()
            with self.clock("finish"):
                state.finish()
            if self.copier is None:
                yield state.key, state.image, state.maps(self.alloc)
                continue
            ready = torch.cuda.Event()
            ready.record()
            self.finishing.append((state, ready))
        yield from self.drain(force=False)

    def drain(self, force: bool) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
        finishing = self.finishing
        while finishing and (
            force or len(finishing) > self.opts.max_lag or finishing[0][1].query()
        ):
            state, ready = finishing.popleft()
            with self.clock("download"):
                maps = state.maps(self.alloc, self.copier, ready)
            yield state.key, state.image, maps


def check_image(image: np.ndarray, key: Any) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise HoverNetError(
            f"{key}: expected an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}"
        )
    return image


def predict_maps(
    model: torch.nn.Module,
    image: np.ndarray,
    batch_size: int = 8,
    precision: str = "auto",
    geometry: ModelGeometry | None = None,
) -> PredMaps:
    """The stitched network maps of one RGB uint8 image of any size."""
    stream = predict_stream(model, [("image", image)], batch_size, precision, geometry=geometry)
    ((_, _, maps),) = stream
    return maps


def predict_phases_many(
    model: torch.nn.Module,
    images: list[np.ndarray],
    phases: Phases,
    batch_size: int = 8,
    precision: str = "auto",
) -> list[tuple[PredMaps, np.ndarray | None]]:
    """(merged maps on the network grid, merged nucleus probability at the image's pixels or
    None for one phase) of each image run at `phases` (`hovernet.infer.phased`), their windows
    sharing batches (for the bundled model the same bits as one image at a time, measured; in
    general a kernel's work split can move a value by one float step with the batch, see
    `predict_stream`'s `span`)."""

    def predict(items: Iterable[tuple[Any, np.ndarray]]) -> Iterator:
        return predict_stream(model, items, batch_size, precision)

    merged = phased_stream(predict, enumerate(images), phases)
    return [(maps, prob) for _, _, maps, prob in merged]


def segment_image(
    model: torch.nn.Module,
    image: np.ndarray,
    batch_size: int = 8,
    precision: str = "auto",
    backend: str | None = None,
    input_mpp: float | None = None,
    proc_mpp: float | None = None,
    phases: int | None = None,
) -> tuple[np.ndarray, dict[int, dict], np.ndarray]:
    """Nuclei of one H x W x 3 uint8 RGB image of any size: (inst_map, nuclei, pred_map).

    Other shapes (a 2-D greyscale array) are a HoverNetError; colour is not judged here (the
    file readers do: `hovernet.io.input_checks.colour_problem`). `inst_map`, `nuclei` are as
    `hovernet.postprocess` returns them (with `type_probs` for a typed model); `pred_map` is
    the stitched network output in the original's layout. The model runs on the device of its
    parameters; `backend` ("auto", "torch", "onnxruntime": `infer.backends.use_backend`) is
    attached to it for later calls (None: the one attached, else PyTorch).

    `input_mpp` (um/px of `image`) resamples it to `proc_mpp`, else `model.meta.mpp`, for the
    network; the results are in the image's pixels. Without it the image is taken to be at that
    resolution, with a HoverNetWarning (none where neither is known). `phases` (1, 2 or 4;
    None: 1) averages the maps of that many sub-pixel shifts of an image at least 1.5x finer
    than the network (`resample.phase_offsets`)."""
    if backend is not None:
        use_backend(model, backend, precision)
    image = check_image(image, "image")
    zoom = resample.resolution_zoom(input_mpp, resample.model_mpp(model), proc_mpp)
    maps_mpp = proc_mpp or resample.model_mpp(model)  # the network maps' resolution
    if input_mpp is None and maps_mpp is not None:
        whose = "the model's" if proc_mpp is None else "proc_mpp's"
        said = f"image: no input_mpp given, so it is taken to be at {whose} {maps_mpp:g} um/px"
        warnings.warn(HoverNetWarning(f"{said}; pass input_mpp=... (0.25 for 40x)"), stacklevel=2)
    ((maps, prob),) = predict_phases_many(
        model, [image], Phases.of(zoom, phases), batch_size, precision
    )
    inst_map, nuclei = maps_to_nuclei(maps, model.nr_types, maps_mpp, image.shape, prob)
    typed = maps.type_softmax is not None
    return inst_map, nuclei, resample.maps_to_input(maps.pred_map, image.shape, typed)
