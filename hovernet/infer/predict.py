"""Streaming prediction: RGB images of any size -> stitched network maps -> nuclei.

- `predict_stream`: a stream of (key, image) -> (key, image, `PredMaps`) in order; windows of
  consecutive images share batches, so many small tiles still fill a batch;
- `predict_maps`: the maps of one image;
- `segment_image`: one image -> (instance map, nuclei, pred_map), the public one-image API.

Each batch runs through `run_batch`: the backend chosen for the model
(`hovernet.infer.backends.use_backend`), else PyTorch with autocast per `precision`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hovernet.config import ModelGeometry
from hovernet.device import autocast_dtype, model_device
from hovernet.errors import HoverNetError
from hovernet.infer import resample
from hovernet.infer.backends import backend_of, use_backend
from hovernet.infer.maps import (
    PredMaps,
    logits_to_maps,
    maps_to_nuclei,
    merge_phase_maps,
    to_pred_maps,
)
from hovernet.infer.tiling import Stitcher, TileGrid


def run_batch(model: torch.nn.Module, patches: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
    """N x S x S x 3 uint8 windows -> N x s x s x (3 + C) float32 [np prob, h, v, softmax...].

    Runs through the backend chosen by `hovernet.infer.backends.use_backend`, else PyTorch.
    """
    backend = backend_of(model)
    if backend is not None:
        return backend.run(patches)
    device = model_device(model)
    x = torch.from_numpy(patches)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    # NHWC -> NCHW view: its strides are already channels-last, which the convs prefer
    x = x.permute(0, 3, 1, 2).float()
    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(x)
    return logits_to_maps(out).to("cpu").numpy()


@dataclass
class _Pending:
    key: Any
    image: np.ndarray
    stitcher: Stitcher


def predict_stream(
    model: torch.nn.Module,
    items: Iterable[tuple[Any, np.ndarray]],
    batch_size: int = 8,
    precision: str = "auto",
    geometry: ModelGeometry | None = None,
) -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
    """Yield (key, image, PredMaps) for each (key, RGB uint8 image), in order.

    Windows of consecutive images share batches. The model runs under `torch.inference_mode`
    on the device of its parameters, with autocast per `precision` (see `autocast_dtype`).
    `geometry` defaults to `model.geometry`; `model.nr_types` (None = untyped) sets the maps.
    """
    if batch_size < 1:
        raise HoverNetError(f"batch size must be at least 1, got {batch_size}")
    geometry = geometry or model.geometry
    typed = getattr(model, "nr_types", None) is not None
    channels = 3 + (model.nr_types if typed else 0)
    dtype = autocast_dtype(model_device(model), precision)
    pending: deque[_Pending] = deque()
    windows: list[tuple[_Pending, int]] = []
    batch: list[np.ndarray] = []

    def flush() -> Iterator[tuple[Any, np.ndarray, PredMaps]]:
        outputs = run_batch(model, np.stack(batch), dtype)
        for (state, index), output in zip(windows, outputs, strict=True):
            state.stitcher.add(index, output)
        batch.clear()
        windows.clear()
        while pending and pending[0].stitcher.done:
            state = pending.popleft()
            yield state.key, state.image, to_pred_maps(state.stitcher.result(), typed)

    with torch.inference_mode():
        for key, image in items:
            image = check_image(image, key)
            grid = TileGrid(image.shape[:2], geometry.input_size, geometry.output_size)
            padded = grid.pad(image)
            state = _Pending(key, image, Stitcher(grid, channels))
            pending.append(state)
            for index in range(len(grid)):
                batch.append(grid.crop(padded, index))
                windows.append((state, index))
                if len(batch) == batch_size:
                    yield from flush()
        if batch:
            yield from flush()


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
    ((_, _, maps),) = predict_stream(model, [("image", image)], batch_size, precision, geometry)
    return maps


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
    """Nuclei of one RGB uint8 image of any size: (inst_map, nuclei, pred_map).

    `inst_map` and `nuclei` are as `hovernet.postprocess` returns them (with `type_probs`, the
    mean per-class softmax, for a typed model); `pred_map` is the stitched network output in the
    original's layout. The model runs on the device of its parameters. `backend` ("auto",
    "torch", "onnxruntime"; see `hovernet.infer.backends.use_backend`) is attached to the model
    and kept for later calls; None runs the backend already attached, else PyTorch.

    `input_mpp` (um/px of `image`) resamples it to `proc_mpp`, else `model.meta.mpp`, for the
    network; all three results are mapped back to the image's pixels (`hovernet.infer.resample`).
    `phases` (1, 2 or 4; None: 4 where the image is at least 1.5x finer than the network, else
    1) runs the network on that many sub-pixel shifts of the image and averages the maps
    (`resample.phase_offsets`, `merge_phase_maps`).
    """
    if backend is not None:
        use_backend(model, backend, precision)
    image = check_image(image, "image")
    scale = resample.resolution_scale(input_mpp, resample.model_mpp(model), proc_mpp)
    offsets = resample.phase_offsets(scale, phases)
    items = enumerate(resample.phase_inputs(image, offsets, scale))
    phase_maps = [maps for _, _, maps in predict_stream(model, items, batch_size, precision)]
    maps, prob = merge_phase_maps(phase_maps, offsets, image.shape)
    map_mpp = proc_mpp or resample.model_mpp(model)  # the network maps' resolution
    inst_map, nuclei = maps_to_nuclei(maps, model.nr_types, map_mpp, image.shape, prob)
    typed = maps.type_softmax is not None
    return inst_map, nuclei, resample.maps_to_input(maps.pred_map, image.shape, typed)
