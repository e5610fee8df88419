"""Tile mode: a list of image files -> `json/ mat/ overlay/ qupath/ csv/` outputs.

A thin front end over the engine (`hovernet.infer.engine.run_engine`): the network runs in this
process on the images (read ahead in threads, resampled to the network's resolution and its
sub-pixel phases when `input_mpp` says so); post-processing and writing run in a small process
pool while the network works on the next image. Unreadable inputs are reported by name and
skipped. The one-image API is `hovernet.infer.predict.segment_image`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet.errors import HoverNetError
from hovernet.infer import resample
from hovernet.infer.backends import effective_precision
from hovernet.infer.engine import (
    EngineConfig,
    FrontEnd,
    physical_memory,
    read_ahead,
    run_engine,
)
from hovernet.infer.maps import PredMaps
from hovernet.infer.phased import PhasedStream, Phases
from hovernet.infer.run_record import RUN_RECORD, RunRecord, recorded_run
from hovernet.infer.tile_worker import TileJob, finish_tile, is_done
from hovernet.infer.tiling import TileGrid
from hovernet.io.atomic import (
    check_writable_dir,
    remove_empty_dirs,
    remove_temporaries,
    write_text_atomic,
)
from hovernet.io.inputs import list_inputs
from hovernet.io.names import output_stem
from hovernet.io.slides import image_size, read_rgb
from hovernet.io.type_info import TypeInfo
from hovernet.io.write_errors import write_failure
from hovernet.progress import Progress, set_status

RESUME = "rerun the same command to resume (finished images are skipped)"


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
    phases: int | None = None  # sub-pixel phases (1, 2, 4); None = 1
    model_id: str = ""  # the checkpoint's content hash: finished images count for it only
    features: bool = True  # per-nucleus colour and texture features (hovernet.infer.features)
    stain_norm: str | None = None  # --stain_norm's reference statistics (set on the model)

    def __post_init__(self) -> None:
        resample.check_mpp(self.input_mpp, "--input_mpp")
        resample.check_mpp(self.proc_mpp, "--proc_mpp")
        resample.check_phases(self.phases)


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


# ----------------------------------------------------------------------------------------------
# the folder runner


class _TileRun:
    """The state of one `run_tile`: what is done, the progress bar. Its methods make the
    engine's `make_job` (of an image's merged phases) and `on_result`."""

    def __init__(self, model, config: TileConfig, files: list[Path], log, bar: Progress):
        self.model, self.config, self.files, self.log, self.bar = model, config, files, log, bar
        self.mpp = resample.model_mpp(model)
        self.zoom = resample.resolution_zoom(config.input_mpp, self.mpp, config.proc_mpp)
        self.phases = Phases.of(self.zoom, config.phases)
        self.summary = TileSummary()
        self.record = RunRecord.of(
            config.model_id,
            mode=getattr(model, "mode", None),
            nr_types=getattr(model, "nr_types", None),
            precision=effective_precision(model, config.precision),
            input_mpp=config.input_mpp,
            proc_mpp=config.proc_mpp or self.mpp,
            phases=self.phases.n,
            features=config.features,
            stain_norm=config.stain_norm,
        )
        self.todo: list[Path] = []
        for path in files:
            if not config.overwrite and is_done(config.output_dir, output_stem(path)):
                self.summary.skipped.append(output_stem(path))
            else:
                self.todo.append(path)
        self.sizes = {p: image_size(p) for p in self.todo}
        self.lock = threading.Lock()
        self.fatal: list[str] = []
        self.stream = PhasedStream(self.phases)  # each image's phases out, merged maps back
        # the input images' resolution: given, else the network's (they are not resampled)
        self.image_mpp = config.input_mpp or config.proc_mpp or self.mpp

    def check_record(self) -> None:
        """Refuse to add to a folder whose finished outputs were made with another model or
        settings (its RUN_RECORD), unless `overwrite` redoes them; then record this run's."""
        out, s = self.config.output_dir, self.summary
        record = out / RUN_RECORD
        if s.skipped:
            try:
                old = recorded_run(record)
            except (OSError, ValueError):
                old = None
            if not isinstance(old, dict):
                raise HoverNetError(
                    f"{out} holds finished outputs ({', '.join(s.skipped[:3])}, ...) but no "
                    f"readable {RUN_RECORD} saying which model made them: pass --overwrite to "
                    "redo them, or choose another --output_dir"
                )
            diff = self.record.differences(old)
            if diff:
                raise HoverNetError(
                    f"the outputs in {out} were made with another model or settings "
                    f"({diff}): pass --overwrite to redo them, or choose another "
                    "--output_dir"
                )
        try:
            record_text = json.dumps(self.record.to_dict(), indent=1, sort_keys=True)
            write_text_atomic(record, record_text)
        except OSError as exc:
            message = write_failure(exc, out, RESUME)
            if message is None:
                raise
            raise HoverNetError(message) from None

    def patches_of(self, shape: tuple[int, ...]) -> int:
        geometry = self.model.geometry
        return len(TileGrid(shape[:2], geometry.input_size, geometry.output_size))

    def total_patches(self) -> int:
        known = [s for s in self.sizes.values() if s is not None]
        each = [self.patches_of(self.phases.network_shape(s)) for s in known]
        return self.phases.n * sum(each)

    def status(self) -> None:
        s = self.summary
        set_status(
            f"{len(s.done) + len(s.skipped)} of {len(self.files)} images finished in "
            f"{self.config.output_dir}"
            + (f" ({len(s.skipped)} from before)" if s.skipped else "")
            + "; rerun the same command to do the rest (finished images are skipped)"
        )

    def images(self) -> Iterator[tuple[Path, np.ndarray]]:
        """(path, image) for each readable image."""
        for path, future in read_ahead(self.todo, read_rgb, self.config.read_workers):
            try:
                image = future.result()
            except Exception as exc:  # report any unreadable file and go on with the rest
                self.summary.failed[str(path)] = str(exc)
                # a HoverNetError names the file already
                self.log(f"skipped {exc}" if str(path) in str(exc) else f"skipped {path}: {exc}")
                continue
            yield path, image

    def make_job(
        self, path: Path, image: np.ndarray, maps: PredMaps, prob: np.ndarray | None
    ) -> tuple[Any, int]:
        """The job of an image's merged maps (`prob`: with several phases)."""
        if self.fatal:
            raise HoverNetError(self.fatal[0])
        n_patches = self.phases.n * self.patches_of(self.phases.network_shape(image.shape))
        if self.sizes.get(path) is None:  # its size was unknown before
            self.bar.set_total((self.bar.total or 0) + n_patches)
        with self.lock:
            nuclei = sum(self.summary.done.values())
        self.bar.advance(n_patches, nuclei=nuclei)
        config = self.config
        job = TileJob(
            name=output_stem(path),
            image=image,
            maps=maps,
            nr_types=self.model.nr_types,
            output_dir=config.output_dir,
            type_info=config.type_info,
            draw_dot=config.draw_dot,
            save_raw_map=config.save_raw_map,
            maps_mpp=config.proc_mpp or self.mpp,
            prob=prob,
            features=config.features,
            image_mpp=self.image_mpp,
        )
        return job, job.nbytes

    def on_result(self, path: Path, result: Any, exc: BaseException | None) -> None:
        with self.lock:
            self._record(output_stem(path), result, exc)
            self.status()
            # the running total of nuclei found, which the network's progress lags behind
            self.bar.advance(0, nuclei=sum(self.summary.done.values()))

    def _record(self, name: str, result: Any, exc: BaseException | None) -> None:
        s = self.summary
        where = f"[{len(s.done) + len(s.failed) + 1}/{len(self.todo)}] {name}"
        if exc is not None:
            fatal = write_failure(exc, self.config.output_dir, RESUME)
            if fatal is not None:
                self.fatal.append(fatal)
            s.failed[name] = f"{type(exc).__name__}: {exc}"
            self.log(f"{where}: FAILED ({type(exc).__name__}: {exc})")
            return
        _, n_nuclei, post_s, write_s = result
        s.done[name] = n_nuclei
        s.postprocess_s += post_s
        s.write_s += write_s
        self.log(f"{where}: {n_nuclei} nuclei")


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
    files = list_inputs(config.inputs)
    bar = progress if progress is not None else Progress(None, "", quiet=True)
    run = _TileRun(model, config, files, log, bar)
    note = resample.resolution_note(config.input_mpp, run.mpp, config.proc_mpp)
    if note:
        log(note)
    if config.features and run.image_mpp is None:
        log(
            "warning: the images' resolution is unknown (the checkpoint records none): the "
            "ring features (ring_*) are left empty; pass --input_mpp to measure them"
        )
    n = run.phases.n
    if n > 1:
        log(
            f"the network runs on {n} sub-pixel phases of each image (shifted by half a network "
            f"pixel, {run.phases.offsets[-1][0]} input px), averaged: finer outlines for {n}x "
            "the network time (--phases 1: one)"
        )
    out = config.output_dir
    created = check_writable_dir(out)
    remove_temporaries(out)  # left by a run that was killed
    run.check_record()
    summary = run.summary
    if summary.skipped:
        log(
            f"{len(summary.skipped)} of {len(files)} images already done in {out} (all five "
            "outputs exist), skipped; --overwrite redoes them"
        )
    bar.set_total(run.total_patches())
    run.status()
    start = time.perf_counter()
    engine = EngineConfig(
        batch_size=config.batch_size,
        precision=config.precision,
        workers=config.post_proc_workers if run.todo else 0,
        mem_budget=max(1, int(config.mem_usage * physical_memory())),
        report_as_done=True,
    )
    try:
        front = FrontEnd(run.stream.make_job(run.make_job), finish_tile, run.on_result)
        stats = run_engine(model, run.stream.inputs(run.images()), front, engine)
        summary.n_patches = stats.n_windows
        summary.network_s = stats.network_s
        if run.fatal:
            raise HoverNetError(run.fatal[0])
    finally:
        remove_temporaries(out)
        if created and not summary.done:
            (out / RUN_RECORD).unlink(missing_ok=True)
            remove_empty_dirs(out)
    summary.wall_s = time.perf_counter() - start
    return summary
