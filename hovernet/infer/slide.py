"""Slide mode: whole-slide images through the shared engine, in bounded memory, resumable.

A slide runs in three steps (`run_slide`), with the slide open once:

1. `prepare_slide` (`hovernet.infer.slide_plan`) -> `SlidePlan`: the frame nuclei are outlined
   in (the processing resolution, or twice as fine with sub-pixel phases), the run's record,
   the tissue mask (found on a thumbnail, or a user's), the overlapping regions
   (`hovernet.infer.regions`) and those that hold tissue, the store's meta;
2. `segment`: the tissue regions not stored yet through `hovernet.infer.engine.run_engine`
   (background threads read regions ahead, the network runs on batches, each region at its
   phases, `hovernet.infer.phased`; worker processes post-process each region and keep the
   nuclei whose centroid lies in its core and in tissue) into the slide's SQLite store
   (`hovernet.io.store`), one transaction per region;
3. `finish`: the exports from the store (`hovernet.io.slide_exports`) and `<slide>.summary.json`
   last: its presence marks the slide finished.

Killing a run at any moment loses at most the regions in flight; the next run skips finished
slides and, inside an unfinished one, the stored regions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet import __version__
from hovernet.errors import HoverNetError
from hovernet.infer.claims import Cohort, as_cohort
from hovernet.infer.engine import EngineConfig, FrontEnd, read_ahead, run_engine
from hovernet.infer.hv_calibration import calibrate_hv_ranges
from hovernet.infer.maps import PredMaps
from hovernet.infer.phased import PhasedStream
from hovernet.infer.regions import NUCLEUS_MARGIN, Region, TissueBoxes
from hovernet.infer.resample import model_mpp
from hovernet.infer.resolution import plausibility_warnings
from hovernet.infer.slide_plan import (
    SlideContext,
    SlidePlan,
    finished_differs,
    make_frame,
    prepare_slide,
    resolve_auto_mpp,
    slide_record,
)
from hovernet.infer.slide_setup import SlideConfig
from hovernet.infer.slide_worker import RegionJob, mask_window, region_nuclei
from hovernet.infer.tiling import TileGrid
from hovernet.infer.workers import make_pool, maps_nbytes, warm
from hovernet.io.atomic import check_writable_dir, remove_empty_dirs
from hovernet.io.cohort_files import update_after_slide
from hovernet.io.locks import slide_lock
from hovernet.io.names import output_stem
from hovernet.io.slide_exports import export_slide, output_paths, remove_outputs, write_summary
from hovernet.io.store import NucleusStore
from hovernet.io.write_errors import write_failure
from hovernet.progress import Progress, set_status

RESUME = "rerun the same command to resume (stored regions and finished slides are kept)"


@dataclass
class SlideResult:
    name: str
    status: str  # "done", "skipped" (finished before) or "failed"
    reason: str = ""
    n_nuclei: int = 0
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Segmented:
    """What `segment` did: the regions it ran now, the network windows run, the network time."""

    regions_run: int
    windows: int
    network_s: float


# ----------------------------------------------------------------------------------------------
# one slide


def run_slide(
    model: torch.nn.Module, path: Path, config: SlideConfig, context: SlideContext = SlideContext()
) -> SlideResult:
    """Segment one slide into `config.output_dir` (see the module docstring); errors raise.

    A slide finished before with the same model and settings (`slide_record`) is skipped; one
    finished with others is refused (HoverNetError naming --overwrite), never kept silently."""
    name = output_stem(path)
    paths = output_paths(config.output_dir, name)
    estimate = None
    if config.slide_mpp == "auto":
        config, estimate = resolve_auto_mpp(model, path, config, context.opener, context.log)
    start = time.perf_counter()  # the wall time counts opening the slide, as it always did
    with context.open(path, config) as slide:
        if paths["summary"].exists() and not config.overwrite:
            return _finished_before(model, slide, config, name)
        with slide_lock(config.output_dir / f"{name}.lock"):
            if config.overwrite:
                remove_outputs(paths)
            plan = prepare_slide(model, slide, config, context, name, estimate)
            with NucleusStore(paths["store"], plan.store_meta) as store:
                store.set_meta("model", config.model_name)  # shown by the viewer; not compared
                segmented = segment(model, slide, plan, store, config, context)
                summary = finish(store, plan, config, segmented, start, context.log)
    return SlideResult(name, "done", "", summary["nuclei"], summary)


def _finished_before(model, slide, config: SlideConfig, name: str) -> SlideResult:
    """A finished slide: skipped when made by the same run, else a HoverNetError."""
    frame = make_frame(slide, config, model_mpp(model), name, _quiet)
    summary = output_paths(config.output_dir, name)["summary"]
    differs = finished_differs(summary, slide_record(model, config, slide.mpp, frame))
    if differs is None:
        return SlideResult(name, "skipped", "finished before (pass --overwrite to redo)")
    raise HoverNetError(
        f"{summary} was made with another model or settings ({differs}): pass "
        "--overwrite to redo the slide, or choose another --output_dir"
    )


def _quiet(line: str) -> None:
    pass


def segment(
    model: torch.nn.Module,
    slide,
    plan: SlidePlan,
    store: NucleusStore,
    config: SlideConfig,
    context: SlideContext,
) -> Segmented:
    """Run `plan`'s tissue regions that `store` lacks through the engine into it; a region
    that failed is a HoverNetError once the others are stored (a rerun retries it)."""
    todo = plan.todo(store.done_regions())
    n_tissue = len(plan.tissue_indices)
    with Progress(n_tissue, plan.name, "regions", config.quiet) as bar:
        run = _SlideRun(model, slide, plan, store, bar)
        run.status_note, run.features = context.status_note, config.features
        # one region has nothing to overlap with: post-processed here, without starting a
        # worker (on 2 cores slide_a took 6.2 s instead of 8.4 s)
        workers = config.post_proc_workers if len(todo) > 1 else 0
        if context.pool is not None and workers:  # workers start during calibration
            warm(context.pool, workers, "hovernet.infer.slide_worker")
        if todo:  # the slide's HV gradient ranges: measured once, kept in the store
            if store.meta.get("hv_ranges") is None:
                store.set_meta("hv_ranges", calibrate_hv_ranges(model, slide, plan, config))
            run.ranges = store.meta.get("hv_ranges") or None
        bar.resume(n_tissue - len(todo))
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
        phased = PhasedStream(plan.frame.phases)  # each region at its phases, merged
        front = FrontEnd(phased.make_job(run.make_job), region_nuclei, run.on_result,
                         run.near_tissue)  # fmt: skip
        items = phased.inputs(run.items(todo, config.read_workers))
        stats = run_engine(model, items, front, engine, context.pool if workers else None)
    if run.failures:
        raise HoverNetError(
            f"{len(run.failures)} region(s) failed (rerun to retry them): {run.failures[0]}"
        )
    return Segmented(len(todo), stats.n_windows, stats.network_s)


def finish(
    store: NucleusStore,
    plan: SlidePlan,
    config: SlideConfig,
    segmented: Segmented,
    start: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the slide's exports from `store`, then its summary (the run's figures, `start`:
    when it began, `time.perf_counter`); returns the summary."""
    paths = output_paths(config.output_dir, plan.name)
    summary = export_slide(store, paths, plan.exports, log)
    wall = time.perf_counter() - start
    summary.update(_run_figures(plan, config, segmented, summary["nuclei"], wall))
    if plan.estimate is not None:
        summary["slide_mpp_estimate"] = plan.estimate.describe()
    warnings = plausibility_warnings(
        summary["nuclei"], plan.tissue_mm2, mpp=plan.exports.slide_mpp, name=plan.name
    )
    for line in warnings:
        log(f"warning: {line}")
    summary["warnings"] = warnings
    write_summary(paths["summary"], summary)
    return summary


def _run_figures(
    plan: SlidePlan, config: SlideConfig, segmented: Segmented, nuclei: int, wall: float
) -> dict[str, Any]:
    """The summary's fields about the run (after the exports' slide and nuclei fields)."""
    mm2, n_tissue, n_now = plan.tissue_mm2, len(plan.tissue_indices), segmented.regions_run
    return dict(
        model=config.model_name,  # a display name: the run's identity is `run`
        run=plan.record.to_dict(),
        version=__version__,
        tissue=config.tissue_source().describe(),
        regions_total=len(plan.regions),
        regions_tissue=n_tissue,
        regions_this_run=n_now,
        network_windows_this_run=segmented.windows,
        network_s=round(segmented.network_s, 3),
        tissue_mm2=round(mm2, 6),
        nuclei_per_mm2=round(nuclei / mm2, 2) if mm2 else 0.0,
        wall_s=round(wall, 3),
        regions_per_s=round(n_now / wall, 4) if wall else 0.0,
        tissue_mm2_per_min=(round(mm2 * n_now / max(1, n_tissue) / wall * 60, 4) if wall else 0.0),
    )


class _SlideRun:
    """One slide's regions through the engine into its store. Its methods are the engine's
    item stream, `make_job` (of a region's merged phases) and `on_result`."""

    def __init__(self, model, slide, plan: SlidePlan, store: NucleusStore, bar: Progress):
        self.model, self.slide, self.store, self.bar = model, slide, store, bar
        self.frame = plan.frame
        self.name = plan.name
        self.failures: list[str] = []
        self.nuclei = store.count()
        self.mask: np.ndarray | None = None  # the tissue mask; None: the whole slide
        self.grid = plan.frame.grid  # the frame's pixels (the outline grid)
        self.tissue: TissueBoxes | None = None  # the mask for box queries (windows to run)
        if not plan.mask.all():
            self.mask, self.tissue = plan.mask, plan.tissue_boxes
        self.status_note = ""  # what set_status says after the stored regions
        self.ranges: list[float] | None = None  # HV normalisation extremes (store meta)
        self.features = False  # colour features: keep each region's pixels for its job

    def items(self, todo: list[Region], workers: int) -> Iterator[tuple[Region, np.ndarray]]:
        """(region, its pixels read at the frame's resolution) in order, `workers` threads
        reading ahead."""

        def read(region: Region) -> np.ndarray:
            x0, y0, x1, y1 = region.read
            return self.slide.read(x0, y0, x1 - x0, y1 - y0, self.frame.mpp)

        for region, future in read_ahead(todo, read, workers):
            yield region, future.result()

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

    def make_job(
        self, region: Region, image: np.ndarray, maps: PredMaps, prob: np.ndarray | None
    ) -> tuple[Any, int]:
        """The worker's job of a region's merged maps (`prob`: with phases)."""
        f = self.frame
        window = None
        if self.mask is not None:
            window = mask_window(self.mask, self.tissue.grid, self.grid, region.core)
        job = RegionJob(
            region=region,
            maps=maps,
            nr_types=getattr(self.model, "nr_types", None),
            width=f.width,
            height=f.height,
            frame=self.grid,
            maps_mpp=f.proc_mpp,
            prob=prob,
            tissue=window,
            ranges=self.ranges,
            image=image if self.features else None,
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
                context = SlideContext(log, opener, tissue_fn, pool, note)
                result = run_slide(model, path, config, context)
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
