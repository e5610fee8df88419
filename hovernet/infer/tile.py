"""Tile inference: images of any size through HoVer-Net, then nuclei, then the five outputs.

Two layers:

- `predict_maps` / `segment_image`: one RGB image in memory -> the stitched network maps ->
  (instance map, nuclei, pred_map). `predict_stream` does the same for a stream of images with
  batches that span image boundaries, so many small tiles still fill a batch.
- `run_tile`: a list of image files -> `json/ mat/ overlay/ qupath/ csv/` outputs. The network
  runs in this process; post-processing and writing run in a small process pool while the
  network works on the next image. Unreadable inputs are reported by name and skipped.

The network maps follow the original's layout: `pred_map` is H x W x 4 = [type id (arg-max of
the type softmax, as float), nucleus probability, h, v] for a typed model and H x W x 3 = [nucleus
probability, h, v] without type branch; `type_softmax` (H x W x nr_types) is kept beside it.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet.config import ModelGeometry
from hovernet.errors import HoverNetError
from hovernet.infer.tiling import Stitcher, TileGrid
from hovernet.io.slides import PLAIN_SUFFIXES, TIFF_SUFFIXES, image_size
from hovernet.io.type_info import TypeInfo
from hovernet.io.type_info import load_type_info as read_type_info_file
from hovernet.progress import Progress, set_status

TILE_SUFFIXES = PLAIN_SUFFIXES | TIFF_SUFFIXES
OUTPUT_KINDS = ("json", "mat", "overlay", "qupath", "csv")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------------------------
# network side (this process)


@dataclass
class PredMaps:
    """Stitched network maps of one image (see the module docstring for the layout)."""

    pred_map: np.ndarray
    type_softmax: np.ndarray | None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto"/None -> CUDA when available, else CPU; refuses CUDA on a machine without it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HoverNetError(f"unknown device {device!r}: use cpu, cuda, cuda:1 or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HoverNetError(f"device {device!r}: no CUDA device here; use --device cpu")
    return dev


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name (None = plain float32).

    "auto" is bf16 on CUDA devices that support it, fp16 on older GPUs, and fp32 on CPU.
    """
    if precision not in PRECISIONS:
        raise HoverNetError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _run_batch(
    model: torch.nn.Module, patches: np.ndarray, dtype: torch.dtype | None
) -> np.ndarray:
    """N x S x S x 3 uint8 windows -> N x s x s x (3 + C) float32 [np prob, h, v, softmax...].

    Runs through the backend attached by `hovernet.infer.backends.use_backend`, else PyTorch.
    """
    backend = getattr(model, "inference_backend", None)
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


def logits_to_maps(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Network logits {np, hv[, tp]} (N x C x s x s) -> N x s x s x (3 + C) [np prob, h, v, ...]."""
    parts = [
        torch.softmax(out["np"].float(), dim=1)[:, 1:],
        out["hv"].float(),
    ]
    if "tp" in out:
        parts.append(torch.softmax(out["tp"].float(), dim=1))
    return torch.cat(parts, dim=1).permute(0, 2, 3, 1)


def _to_pred_maps(channels: np.ndarray, typed: bool) -> PredMaps:
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
    from hovernet.infer import resample

    first = phase_maps[0]
    if len(phase_maps) == 1:
        return first, first.pred_map[..., -3]  # [type,] probability, h, v
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
        coarse[..., c] = resample._resize(fine, grid)
        if c == 0:
            prob = fine
    return _to_pred_maps(coarse, typed), prob


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
        outputs = _run_batch(model, np.stack(batch), dtype)
        for (state, index), output in zip(windows, outputs, strict=True):
            state.stitcher.add(index, output)
        batch.clear()
        windows.clear()
        while pending and pending[0].stitcher.done:
            state = pending.popleft()
            yield state.key, state.image, _to_pred_maps(state.stitcher.result(), typed)

    with torch.inference_mode():
        for key, image in items:
            image = _check_image(image, key)
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


def _check_image(image: np.ndarray, key: Any) -> np.ndarray:
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
    from hovernet.infer import resample
    from hovernet.infer.postprocess import postprocess

    if backend is not None:
        from hovernet.infer.backends import use_backend

        use_backend(model, backend, precision)
    image = _check_image(image, "image")
    scale = resample.resolution_scale(input_mpp, resample.model_mpp(model), proc_mpp)
    offsets = resample.phase_offsets(scale, phases)
    items = enumerate(resample.phase_inputs(image, offsets, scale))
    phase_maps = [maps for _, _, maps in predict_stream(model, items, batch_size, precision)]
    maps, prob = merge_phase_maps(phase_maps, offsets, image.shape)
    map_mpp = proc_mpp or resample.model_mpp(model)  # the network maps' resolution
    inst_map, nuclei = postprocess(maps.pred_map, model.nr_types, maps.type_softmax, map_mpp)
    inst_map, nuclei = resample.nuclei_to_input(inst_map, nuclei, image.shape, prob)
    typed = maps.type_softmax is not None
    return inst_map, nuclei, resample.maps_to_input(maps.pred_map, image.shape, typed)


# ----------------------------------------------------------------------------------------------
# inputs, type info


def list_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files from folders (PNG/JPEG/TIFF inside, sorted) and single files, in order.

    Files in a folder with other suffixes are ignored; a file named directly is kept whatever
    its suffix (reading it will say what is wrong).
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in TILE_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                raise HoverNetError(
                    f"no images in {path}: put PNG, JPEG or TIFF files there "
                    f"({', '.join(sorted(TILE_SUFFIXES))})"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise HoverNetError(f"input {path} does not exist: pass an image folder or file")
    return unique_stems(files, "inputs")


def unique_stems(files: list[Path], what: str) -> list[Path]:
    """`files` without repeats; two files whose outputs would share a name are an error."""
    names: dict[str, Path] = {}
    for file in files:
        if file.stem in names and names[file.stem] != file:
            raise HoverNetError(
                f"{what} {names[file.stem]} and {file} would both write outputs named "
                f"{file.stem!r}: rename one or run them separately"
            )
        names[file.stem] = file
    return list(names.values())


def default_type_info(nr_types: int) -> TypeInfo:
    """Names "type 1".. and distinct colours (matplotlib's tab10) when none are given."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    info: TypeInfo = {0: ("background", (0, 0, 0))}
    for i in range(1, nr_types):
        rgba = cmap((i - 1) % 10)
        info[i] = (f"type {i}", tuple(int(round(255 * c)) for c in rgba[:3]))
    return info


def load_type_info(path: str | os.PathLike, nr_types: int | None) -> TypeInfo:
    """Read an original-format type_info.json and check it against the model's types."""
    info = read_type_info_file(path)
    check_type_info(info, nr_types, str(path))
    info.setdefault(0, ("background", (0, 0, 0)))
    return dict(sorted(info.items()))


def check_type_info(info: TypeInfo, nr_types: int | None, source: str) -> None:
    """Type ids must be exactly 1..nr_types-1 (0 = background optional)."""
    if nr_types is None:
        raise HoverNetError(
            f"{source} gives type names but the model has no type branch: drop "
            "--type_info_path or use a typed checkpoint"
        )
    expected = set(range(1, nr_types))
    found = set(info) - {0}
    if found != expected:
        missing = sorted(expected - found)
        extra = sorted(found - expected)
        raise HoverNetError(
            f"{source} does not match nr_types={nr_types} (ids 0..{nr_types - 1}): "
            + (f"missing ids {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"ids {extra} out of range" if extra else "")
        )


# ----------------------------------------------------------------------------------------------
# post-processing and writing (worker processes)


@dataclass
class _Job:
    name: str
    image: np.ndarray
    maps: PredMaps
    nr_types: int | None
    output_dir: Path
    type_info: TypeInfo | None
    draw_dot: bool
    save_raw_map: bool
    map_mpp: float | None = None  # resolution of the maps (scales the watershed's constants)
    prob: np.ndarray | None = None  # nucleus probability (merged phases: at the image's pixels)

    @property
    def nbytes(self) -> int:
        from hovernet.infer.engine import maps_nbytes

        return maps_nbytes(self.image, self.maps.pred_map, self.maps.type_softmax, self.prob)


def output_paths(output_dir: Path, name: str) -> dict[str, Path]:
    suffix = {"json": "json", "mat": "mat", "overlay": "png", "qupath": "geojson", "csv": "csv"}
    return {kind: output_dir / kind / f"{name}.{suffix[kind]}" for kind in OUTPUT_KINDS}


def is_done(output_dir: Path, name: str) -> bool:
    """An image is done when all five of its outputs exist (each is written atomically)."""
    return all(p.is_file() for p in output_paths(output_dir, name).values())


def _finish(job: _Job) -> tuple[str, int, float, float]:
    """Post-process one image and write its five outputs: (name, nuclei, post s, write s).

    The post-processing time includes the shape measurements shared by the CSV and GeoJSON.
    """
    from hovernet.infer import resample
    from hovernet.infer.measure import nucleus_measurements
    from hovernet.infer.postprocess import postprocess
    from hovernet.io import writers

    start = time.perf_counter()
    inst_map, nuclei = postprocess(
        job.maps.pred_map, job.nr_types, job.maps.type_softmax, job.map_mpp
    )
    # maps at the network's resolution (--input_mpp): back to the input image's pixels
    prob = job.maps.pred_map[..., -3] if job.prob is None else job.prob  # [type,] prob, h, v
    inst_map, nuclei = resample.nuclei_to_input(inst_map, nuclei, job.image.shape, prob)
    shapes = nucleus_measurements(inst_map, nuclei)
    mid = time.perf_counter()
    paths = output_paths(job.output_dir, job.name)
    raw_map = None
    if job.save_raw_map:
        typed = job.maps.type_softmax is not None
        raw_map = resample.maps_to_input(job.maps.pred_map, job.image.shape, typed)
    writers.write_json(paths["json"], nuclei, mag=None)
    writers.write_mat(
        paths["mat"], inst_map, nuclei, raw_map=raw_map, typed=job.nr_types is not None
    )
    writers.write_overlay(paths["overlay"], job.image, nuclei, job.type_info, draw_dot=job.draw_dot)
    writers.write_geojson(paths["qupath"], nuclei, job.type_info, measurements=shapes)
    writers.write_csv(paths["csv"], inst_map, nuclei, job.type_info, measurements=shapes)
    return job.name, len(nuclei), mid - start, time.perf_counter() - mid


# ----------------------------------------------------------------------------------------------
# the folder runner


@dataclass(frozen=True)
class TileConfig:
    """Everything `hovernet infer tile` needs besides the model."""

    inputs: tuple[Path, ...]
    output_dir: Path
    batch_size: int = 8
    precision: str = "auto"
    type_info: TypeInfo | None = None
    draw_dot: bool = False
    save_raw_map: bool = False
    post_proc_workers: int = 1  # 0 = post-process in this process
    read_workers: int = 1  # threads that read the next images ahead
    mem_usage: float = 0.2  # share of physical memory for maps waiting for post-processing
    overwrite: bool = False  # redo images whose five outputs exist already
    input_mpp: float | None = None  # um/px of the inputs; None = at the network's resolution
    proc_mpp: float | None = None  # um/px to run the network at; None = the model's
    phases: int | None = None  # sub-pixel phases (1, 2, 4); None = 4 on inputs >= 1.5x finer

    def __post_init__(self) -> None:
        from hovernet.infer.resample import check_mpp, check_phases

        check_mpp(self.input_mpp, "--input_mpp")
        check_mpp(self.proc_mpp, "--proc_mpp")
        check_phases(self.phases)


@dataclass
class TileSummary:
    done: dict[str, int] = field(default_factory=dict)  # name -> number of nuclei
    skipped: list[str] = field(default_factory=list)  # done before (all outputs exist)
    failed: dict[str, str] = field(default_factory=dict)  # input path -> reason
    n_patches: int = 0
    network_s: float = 0.0  # main process: waiting for reads, padding, network, stitching
    postprocess_s: float = 0.0  # summed over workers
    write_s: float = 0.0  # summed over workers
    wall_s: float = 0.0


def _read_ahead(
    files: list[Path], workers: int, summary: TileSummary, log: Callable[[str], None]
) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, image) for each readable file, reading up to `workers` files ahead."""
    from hovernet.infer.engine import read_ahead
    from hovernet.io.slides import read_rgb

    for path, future in read_ahead(files, read_rgb, workers):
        try:
            image = future.result()
        except Exception as exc:  # report any unreadable file and go on with the rest
            summary.failed[str(path)] = str(exc)
            # a HoverNetError names the file already
            log(f"skipped {exc}" if str(path) in str(exc) else f"skipped {path}: {exc}")
            continue
        yield path, image


FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def run_tile(
    model: torch.nn.Module,
    config: TileConfig,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> TileSummary:
    """Segment every input image and write its five outputs under `config.output_dir`.

    An image whose five outputs all exist is done and skipped (`config.overwrite` redoes it);
    existing outputs of other images are left alone; each file is replaced atomically.
    Failures (unreadable input, post-processing or writing error) are logged by name and
    collected in the summary; the caller decides the exit status. A full disk or an unwritable
    output stops the run with a HoverNetError. On an interrupt (KeyboardInterrupt or
    hovernet.errors.Interrupted) the workers are ended and temporary files removed before the
    exception goes on; `hovernet.progress.current_status()` then says what was finished.
    `progress` (optional) is advanced by network patches, with the nuclei found so far.
    With `config.input_mpp`, images are resampled to the network's resolution and every output
    is mapped back to their pixels (`hovernet.infer.resample`); one line says which applies.
    """
    from hovernet.infer import resample
    from hovernet.infer.engine import EngineConfig, physical_memory, run_engine
    from hovernet.io.atomic import check_writable_dir, remove_empty_dirs, remove_temporaries

    files = list_inputs(config.inputs)
    mpp = resample.model_mpp(model)
    scale = resample.resolution_scale(config.input_mpp, mpp, config.proc_mpp)
    offsets = resample.phase_offsets(scale, config.phases)
    note = resample.resolution_note(config.input_mpp, mpp, config.proc_mpp)
    if note:
        log(note)
    if len(offsets) > 1:
        log(
            f"the network runs on {len(offsets)} sub-pixel phases of each image (shifted by half "
            f"a network pixel, {offsets[-1][0]} input px), averaged: finer outlines for "
            f"{len(offsets)}x the network time (--phases 1: one)"
        )
    out = config.output_dir
    created = check_writable_dir(out)
    remove_temporaries(out)  # left by a run that was killed
    summary = TileSummary()
    todo = []
    for path in files:
        if not config.overwrite and is_done(out, path.stem):
            summary.skipped.append(path.stem)
        else:
            todo.append(path)
    if summary.skipped:
        log(
            f"{len(summary.skipped)} of {len(files)} images already done in {out} (all five "
            "outputs exist), skipped; --overwrite redoes them"
        )
    geometry = model.geometry
    sizes = {p: image_size(p) for p in todo}
    bar = progress if progress is not None else Progress(None, "", quiet=True)

    def patches_of(shape) -> int:
        return len(TileGrid(shape, geometry.input_size, geometry.output_size))

    bar.set_total(
        len(offsets)
        * sum(patches_of(resample.model_shape(s, scale)) for s in sizes.values() if s is not None)
    )
    budget = max(1, int(config.mem_usage * physical_memory()))
    total = len(todo)
    lock = threading.Lock()
    fatal: list[str] = []

    def status() -> None:
        finished = len(summary.done) + len(summary.skipped)
        set_status(
            f"{finished} of {len(files)} images finished in {out}"
            + (f" ({len(summary.skipped)} from before)" if summary.skipped else "")
            + "; rerun the same command to do the rest (finished images are skipped)"
        )

    status()
    start = time.perf_counter()
    originals: dict[Path, np.ndarray] = {}  # input images, by path, while resampled ones run
    phases = PhaseCollector(len(offsets))

    def to_network(items: Iterator[tuple[Path, np.ndarray]]) -> Iterator[tuple[Path, np.ndarray]]:
        for path, image in items:
            for resampled in resample.phase_inputs(image, offsets, scale):
                if resampled is not image:
                    originals[path] = image
                yield path, resampled

    def make_job(path: Path, image: np.ndarray, maps: PredMaps) -> tuple[_Job | None, int]:
        if fatal:
            raise HoverNetError(fatal[0])
        n_patches = patches_of(image.shape[:2])
        if sizes.get(path) is None and phases.is_first(path):  # size unknown before reading
            bar.set_total((bar.total or 0) + len(offsets) * n_patches)
        with lock:
            nuclei = sum(summary.done.values())
        bar.advance(n_patches, nuclei=nuclei)
        done = phases.add(path, maps)
        if done is None:
            return None, 0  # the image's other phases are still to come
        original = originals.pop(path, image)
        maps, prob = merge_phase_maps(done, offsets, original.shape)
        job = _Job(
            path.stem,
            original,
            maps,
            model.nr_types,
            out,
            config.type_info,
            config.draw_dot,
            config.save_raw_map,
            config.proc_mpp or mpp,
            prob if len(offsets) > 1 else None,
        )
        return job, job.nbytes

    def on_result(path: Path, result: Any, exc: BaseException | None) -> None:
        with lock:
            count = len(summary.done) + len(summary.failed) + 1
            _record(summary, path.stem, result, exc, count, total, log, fatal)
            status()

    engine = EngineConfig(
        batch_size=config.batch_size,
        precision=config.precision,
        workers=config.post_proc_workers if todo else 0,
        mem_budget=budget,
        report_as_done=True,
    )
    try:
        images = to_network(_read_ahead(todo, config.read_workers, summary, log))
        stats = run_engine(model, images, make_job, _finish, on_result, engine)
        summary.n_patches = stats.n_windows
        summary.network_s = stats.network_s
        if fatal:
            raise HoverNetError(fatal[0])
    finally:
        remove_temporaries(out)
        if created and not summary.done:
            remove_empty_dirs(out)
    summary.wall_s = time.perf_counter() - start
    return summary


def _record(
    summary: TileSummary,
    name: str,
    result: Any,
    exc: BaseException | None,
    count: int,
    total: int,
    log: Callable[[str], None],
    fatal: list[str] | None = None,
) -> None:
    if exc is not None:
        if isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS and fatal is not None:
            where = exc.filename or "the output folder"
            fatal.append(
                f"cannot write {where}: {exc.strerror}; free some space or choose an output "
                "folder you can write to, then rerun (finished images are skipped)"
            )
        summary.failed[name] = f"{type(exc).__name__}: {exc}"
        log(f"[{count}/{total}] {name}: FAILED ({type(exc).__name__}: {exc})")
        return
    _, n_nuclei, post_s, write_s = result
    summary.done[name] = n_nuclei
    summary.postprocess_s += post_s
    summary.write_s += write_s
    log(f"[{count}/{total}] {name}: {n_nuclei} nuclei")
