"""Slide mode: whole-slide images through the shared engine, in bounded memory, resumable.

Per slide: open it (`hovernet.io.wsi.open_slide`), find tissue on a thumbnail (or a user
mask), plan overlapping regions at the processing resolution (`hovernet.infer.regions`; with
sub-pixel phases at twice that resolution, each region run at its phases), then
stream the tissue regions through `hovernet.infer.engine.run_engine`: background threads read
regions ahead, the network runs on batches that span regions, worker processes post-process
each region and keep the nuclei whose centroid lies in its core, and this process stores them
in the slide's SQLite store (`hovernet.io.store`), one transaction per region. When every
tissue region is stored, the exports are written from the store (`hovernet.io.slide_exports`)
and `<slide>.summary.json` last: its presence marks the slide finished.

Killing a run at any moment loses at most the regions in flight; the next run skips finished
slides and, inside an unfinished one, the stored regions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet import __version__
from hovernet.errors import HoverNetError
from hovernet.grids import Grid
from hovernet.infer.claims import Cohort, as_cohort
from hovernet.infer.engine import EngineConfig, FrontEnd, read_ahead, run_engine
from hovernet.infer.maps import PhaseCollector, PredMaps, merge_phase_maps
from hovernet.infer.regions import NUCLEUS_MARGIN, Region, TissueBoxes
from hovernet.infer.resample import phase_inputs, phase_offsets
from hovernet.infer.resolution import plausibility_warnings
from hovernet.infer.slide_setup import (
    SlideConfig,
    SlideFrame,
    calibrate_hv_ranges,
    default_opener,
    default_tissue,
    finished_differs,
    make_frame,
    no_tissue_warning,
    plan_slide,
    processed_mask,
    processed_tissue_mm2,
    resolve_auto_mpp,
    run_key,
    slide_lock,
)
from hovernet.infer.slide_worker import RegionJob, mask_window, region_nuclei
from hovernet.infer.tiling import TileGrid
from hovernet.infer.workers import make_pool, maps_nbytes, warm
from hovernet.io.atomic import check_writable_dir, remove_empty_dirs
from hovernet.io.cohort_files import update_after_slide
from hovernet.io.names import output_stem
from hovernet.io.slide_exports import (
    ExportSpec,
    export_slide,
    output_paths,
    remove_outputs,
    write_summary,
)
from hovernet.io.store import NucleusStore
from hovernet.io.write_errors import write_failure
from hovernet.progress import Progress, set_status

FORMAT_VERSION = 1
RESUME = "rerun the same command to resume (stored regions and finished slides are kept)"


@dataclass
class SlideResult:
    name: str
    status: str  # "done", "skipped" (finished before) or "failed"
    reason: str = ""
    n_nuclei: int = 0
    summary: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# one slide


class _SlideRun:
    """One slide's regions through the engine into its store. Its methods are the engine's
    item stream, `make_job` and `on_result`."""

    def __init__(self, model, slide, frame: SlideFrame, store: NucleusStore, bar: Progress):
        self.model, self.slide, self.frame, self.store, self.bar = model, slide, frame, store, bar
        self.name = output_stem(slide.path)
        self.offsets = phase_offsets(1 / frame.k, frame.n_phases)
        self.shapes: dict[int, tuple[int, ...]] = {}  # regions' read shapes (phases)
        self.phases = PhaseCollector(frame.n_phases)
        self.failures: list[str] = []
        self.nuclei = store.count()
        self.mask: np.ndarray | None = None  # the tissue mask; None: the whole slide
        self.grid = Grid(frame.mpp, frame.scale)  # the frame's pixels (the outline grid)
        self.tissue: TissueBoxes | None = None  # the mask for box queries (windows to run)
        self.status_note = ""  # what set_status says after the stored regions
        self.ranges: list[float] | None = None  # HV normalisation extremes (store meta)
        self.features = False  # colour features: keep each region's pixels for its job
        self.images: dict[int, np.ndarray] = {}  # regions' pixels while their phases run

    def items(self, todo: list[Region], workers: int) -> Iterator[tuple[Region, np.ndarray]]:
        """(region, network input) in order, `workers` threads reading ahead; with phases each
        region read at twice the processing resolution gives its phases."""

        def read(region: Region) -> np.ndarray:
            x0, y0, x1, y1 = region.read
            return self.slide.read(x0, y0, x1 - x0, y1 - y0, self.frame.mpp)

        for region, future in read_ahead(todo, read, workers):
            image = future.result()
            if self.frame.k == 1:
                yield region, image
                continue
            self.shapes[region.index] = image.shape
            if self.features:
                self.images[region.index] = image
            for phase in phase_inputs(image, self.offsets, 0.5):
                yield region, phase

    def near_tissue(self, region: Region, grid: TileGrid) -> np.ndarray | None:
        """Per network window of `region`'s image (`grid`), whether its output square lies
        within the widest nucleus (`NUCLEUS_MARGIN` processing pixels) of tissue; None: the
        whole slide is tissue. Every nucleus whose centroid is in tissue, and so is kept, lies
        in windows that run; the others read as glass (no nucleus)."""
        if self.tissue is None:
            return None
        rx0, ry0, rx1, ry1 = region.read
        height, width = grid.image_shape
        fx, fy = (rx1 - rx0) / width, (ry1 - ry0) / height  # frame pixels per image pixel
        reach = NUCLEUS_MARGIN * self.frame.k
        size = grid.output_size
        return np.array(
            [
                self.tissue.touches(
                    (
                        rx0 + x * fx - reach,
                        ry0 + y * fy - reach,
                        rx0 + (x + size) * fx + reach,
                        ry0 + (y + size) * fy + reach,
                    )
                )
                for y, x in grid.windows()
            ],
            bool,
        )

    def make_job(self, region: Region, image: np.ndarray, maps: PredMaps) -> tuple[Any, int]:
        prob = None
        if self.frame.k > 1:
            done = self.phases.add(region.index, maps)
            if done is None:
                return None, 0  # the region's other phases are still to come
            maps, prob = merge_phase_maps(done, self.offsets, self.shapes.pop(region.index))
            image = self.images.pop(region.index, image)
        f = self.frame
        nr_types = getattr(self.model, "nr_types", None)
        window = None
        if self.mask is not None:
            window = mask_window(self.mask, self.tissue.grid, self.grid, region.core)
        job = RegionJob(
            region,
            maps,
            nr_types,
            f.width,
            f.height,
            self.grid,
            f.proc_mpp,
            prob,
            window,
            self.ranges,
            image if self.features else None,
        )
        return job, maps_nbytes(maps.pred_map, maps.type_softmax, prob, job.image)

    def on_result(self, region: Region, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.failures.append(f"region {region.index}: {type(exc).__name__}: {exc}")
            return
        nuclei, cut = result
        self.store.add_region(region.index, region.core, nuclei, cut)
        self.nuclei += len(nuclei)
        self.bar.advance(1, nuclei=self.nuclei)
        self.status()

    def status(self) -> None:
        stored = len(self.store.done_regions())
        set_status(
            f"{self.name}: {stored} of {self.bar.total} tissue regions stored in "
            f"{self.store.path}{self.status_note}; rerun the same command to continue (stored "
            "regions are kept)"
        )


def _quiet(line: str) -> None:
    pass


def run_slide(
    model: torch.nn.Module,
    path: Path,
    config: SlideConfig,
    pool: ProcessPoolExecutor | None = None,
    log: Callable[[str], None] = print,
    opener: Callable[[Path, SlideConfig], Any] | None = None,
    tissue_fn: Callable[[Any, str, SlideConfig], tuple] | None = None,
    status_note: str = "",
) -> SlideResult:
    """Segment one slide into `config.output_dir` (see the module docstring); errors raise.

    A slide finished before with the same model and settings (`run_key`) is skipped; one
    finished with others is refused (HoverNetError naming --overwrite), never kept silently."""
    name = output_stem(path)
    paths = output_paths(config.output_dir, name)
    model_mpp = getattr(getattr(model, "meta", None), "mpp", None)
    estimate = None
    if config.slide_mpp == "auto":
        config, estimate = resolve_auto_mpp(model, path, config, opener, log)
    if paths["summary"].exists() and not config.overwrite:
        with (opener or default_opener)(path, config) as slide:
            frame = make_frame(
                model_mpp, slide, name, config.proc_mpp, config.proc_mag, config.phases, _quiet
            )
            key = run_key(model, config, slide.mpp, frame)
        differs = finished_differs(paths["summary"], key)
        if differs is None:
            return SlideResult(name, "skipped", "finished before (pass --overwrite to redo)")
        raise HoverNetError(
            f"{paths['summary']} was made with another model or settings ({differs}): pass "
            "--overwrite to redo the slide, or choose another --output_dir"
        )
    start = time.perf_counter()
    with slide_lock(config.output_dir / f"{name}.lock"):
        if config.overwrite:
            remove_outputs(paths)
        with (opener or default_opener)(path, config) as slide:
            frame = make_frame(
                model_mpp, slide, name, config.proc_mpp, config.proc_mag, config.phases, log
            )
            key = run_key(model, config, slide.mpp, frame)
            thumb, thumb_mpp, mask, mask_mpp = (tissue_fn or default_tissue)(slide, name, config)
            plan = plan_slide(model.geometry, frame, config.region_size, config.margin)
            mask = np.asarray(mask, bool)
            tissue = TissueBoxes.of(mask, Grid(mask_mpp), Grid(frame.mpp, frame.scale))
            tissue_idx = plan.tissue_indices(tissue, config.min_tissue_fraction)
            tissue_mm2 = processed_tissue_mm2(plan, mask, mask_mpp, frame.mpp, tissue_idx)
            if not tissue_idx:
                log(no_tissue_warning(name, config.tissue_source()))
            store_meta = {
                "format": FORMAT_VERSION,
                "slide": name,
                "dimensions": list(slide.dimensions),
                "slide_mpp": round(float(slide.mpp), 6),
                "proc_mpp": round(frame.proc_mpp, 6),
                "phases": frame.n_phases,
                "scale": frame.scale,
                "core": plan.core,
                "margin": plan.margin,
                "nr_types": getattr(model, "nr_types", None),
                "tissue_regions": tissue_idx,
                "run": key,
            }
            with NucleusStore(paths["store"], store_meta) as store:
                store.set_meta("model", config.model_name)  # shown by the viewer; not compared
                done = store.done_regions()
                todo = [plan.region(i) for i in tissue_idx if i not in done]
                with Progress(len(tissue_idx), name, "regions", config.quiet) as bar:
                    run = _SlideRun(model, slide, frame, store, bar)
                    if not mask.all():
                        run.mask, run.tissue = mask, tissue
                    run.status_note = status_note
                    run.features = config.features
                    # one region has nothing to overlap with: post-processed here, without
                    # starting a worker (on 2 cores slide_a took 6.2 s instead of 8.4 s)
                    workers = config.post_proc_workers if len(todo) > 1 else 0
                    if pool is not None and workers:  # workers start during calibration
                        warm(pool, workers, "hovernet.infer.slide_worker")
                    if todo:  # the slide's HV gradient ranges: measured once, kept in the store
                        if store.meta.get("hv_ranges") is None:
                            measured = calibrate_hv_ranges(
                                model, slide, frame, mask, mask_mpp, config.batch_size,
                                config.precision,
                            )  # fmt: skip
                            store.set_meta("hv_ranges", measured)
                        run.ranges = store.meta.get("hv_ranges") or None
                    bar.resume(len(tissue_idx) - len(todo))
                    bar.advance(0, nuclei=run.nuclei)
                    run.status()
                    engine = EngineConfig(
                        config.batch_size,
                        config.precision,
                        workers,
                        config.mem_budget,
                        max_in_flight=max(2, 2 * workers),
                        span_images=False,  # a region's maps do not depend on the previous one
                    )
                    items = run.items(todo, config.read_workers)
                    front = FrontEnd(run.make_job, region_nuclei, run.on_result, run.near_tissue)
                    stats = run_engine(model, items, front, engine, pool if workers else None)
                if run.failures:
                    raise HoverNetError(
                        f"{len(run.failures)} region(s) failed (rerun to retry them): "
                        f"{run.failures[0]}"
                    )
                mag = (
                    slide.magnification * slide.mpp / frame.mpp
                    if slide.magnification
                    else 10.0 / frame.mpp
                )
                spec = ExportSpec(
                    slide_path=str(slide.path),
                    dimensions=tuple(slide.dimensions),
                    slide_mpp=float(slide.mpp),
                    frame_mpp=frame.mpp,
                    frame_size=(frame.width, frame.height),
                    mag=mag,
                    thumb=thumb,
                    thumb_mpp=thumb_mpp,
                    mask=mask,
                    type_info=config.type_info,
                    save_mask=config.save_mask,
                    save_thumb=config.save_thumb,
                    save_label_map=config.save_label_map,
                    mask_mpp=mask_mpp,
                    density_grid_um=config.density_grid_um,
                    density_mask=processed_mask(plan, mask, mask_mpp, frame.mpp, tissue_idx),
                )
                summary = export_slide(store, paths, spec, log)
                wall = time.perf_counter() - start
                summary.update(
                    model=config.model_name,  # a display name: the run's identity is `run`
                    run=key,
                    version=__version__,
                    tissue=config.tissue_source().describe(),
                    regions_total=len(plan),
                    regions_tissue=len(tissue_idx),
                    regions_this_run=len(todo),
                    network_windows_this_run=stats.n_windows,
                    network_s=round(stats.network_s, 3),
                    tissue_mm2=round(tissue_mm2, 6),
                    nuclei_per_mm2=round(summary["nuclei"] / tissue_mm2, 2) if tissue_mm2 else 0.0,
                    wall_s=round(wall, 3),
                    regions_per_s=round(len(todo) / wall, 4) if wall else 0.0,
                    tissue_mm2_per_min=(
                        round(tissue_mm2 * len(todo) / max(1, len(tissue_idx)) / wall * 60, 4)
                        if wall
                        else 0.0
                    ),
                )
                if estimate is not None:
                    summary["slide_mpp_estimate"] = estimate.describe()
                warnings = plausibility_warnings(
                    summary["nuclei"], tissue_mm2, mpp=float(slide.mpp), name=name
                )
                for line in warnings:
                    log(f"warning: {line}")
                summary["warnings"] = warnings
                write_summary(paths["summary"], summary)
    return SlideResult(name, "done", "", summary["nuclei"], summary)


# ----------------------------------------------------------------------------------------------
# many slides


def run_slides(
    model: torch.nn.Module,
    slides: Iterable[Path] | Cohort,
    config: SlideConfig,
    log: Callable[[str], None] = print,
    opener: Callable[[Path, SlideConfig], Any] | None = None,
    tissue_fn: Callable[[Any, str, SlideConfig], tuple] | None = None,
) -> list[SlideResult]:
    """Run every slide; one that fails is reported with its reason and the rest go on, except
    after a failure to write the outputs (a full disk, a read-only folder): the other slides
    would fail alike, so none is started.

    `slides` is a list, or a `hovernet.infer.claims` cohort that hands this process its next
    slide only when it asks for one (`CounterClaims` under torchrun, `FileClaims` for job
    arrays): slides are pulled one at a time, and the cohort is told when each has ended.
    An output folder this call creates is removed again if nothing is written into it."""
    created = check_writable_dir(config.output_dir)
    cohort = as_cohort(slides)
    results = []
    pool = make_pool(config.post_proc_workers)
    try:
        for path in cohort:
            finished = sum(r.status != "failed" for r in results)
            note = f"; {finished} of {len(cohort)} slides finished here before this one"
            fatal = None
            try:
                result = run_slide(model, path, config, pool, log, opener, tissue_fn, note)
            except Exception as exc:  # report the slide and go on with the rest
                fatal = write_failure(exc, config.output_dir, RESUME)
                result = SlideResult(output_stem(path), "failed", fatal or _reason(exc))
            cohort.ended(path, result.status)
            results.append(result)
            log(describe_result(cohort.number(path), len(cohort), result))
            if fatal is not None:
                break
            # cohort.csv: this slide's row (a finished one's if missing)
            update_after_slide(config.output_dir, result.name, result.status, log)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if created:
            remove_empty_dirs(config.output_dir)
    return results


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HoverNetError) else f"{type(exc).__name__}: {exc}"


def describe_result(k: int, total: int, r: SlideResult) -> str:
    """The line that reports slide `k` of `total`: a processing rate only for regions this run
    processed, and how many regions came from an earlier run's store."""
    head = f"[{k}/{total}] {r.name}: "
    if r.status == "failed":
        return head + f"FAILED ({r.reason})"
    if r.status == "skipped":
        return head + f"skipped, {r.reason}"
    s = r.summary
    n_tissue, n_now = s.get("regions_tissue", 0), s.get("regions_this_run", 0)
    earlier = n_tissue - n_now
    regions = f"{n_tissue} regions" + (f" ({earlier} from the earlier run)" if earlier else "")
    line = (
        f"{r.n_nuclei} nuclei, {s.get('tissue_mm2', 0):.2f} mm^2 tissue, {regions} in "
        f"{s.get('wall_s', 0):.1f} s"
    )
    if n_now:
        line += f" ({s.get('tissue_mm2_per_min', 0.0):.2f} mm^2/min)"
    return head + line
