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

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet.config import ModelGeometry
from hovernet.errors import HoverNetError
from hovernet.infer import tissue
from hovernet.infer.engine import EngineConfig, make_pool, maps_nbytes, read_ahead, run_engine
from hovernet.infer.maps import PhaseCollector, PredMaps, maps_to_nuclei, merge_phase_maps
from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.regions import NUCLEUS_MARGIN, Region, RegionPlan, owned_nuclei, plan_regions
from hovernet.infer.resample import check_phases, phase_inputs, phase_offsets
from hovernet.io.slide_exports import (
    ExportSpec,
    export_slide,
    output_paths,
    remove_outputs,
    write_summary,
)
from hovernet.io.slides import IMAGE_SUFFIXES, read_rgb
from hovernet.io.store import NucleusStore
from hovernet.io.type_info import TypeInfo
from hovernet.io.wsi import open_slide, resolve_proc_mpp
from hovernet.progress import Progress

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SlideConfig:
    """Everything `hovernet infer wsi` needs besides the model and the slide list."""

    output_dir: Path
    proc_mpp: float | None = None
    proc_mag: float | None = None
    slide_mpp: float | None = None
    slide_mag: float | None = None
    region_size: int = 3000  # core side at the processing resolution
    margin: int | None = None  # None: network margin + widest nucleus
    batch_size: int = 8
    precision: str = "auto"
    post_proc_workers: int = 1
    read_workers: int = 2
    mem_budget: int = 2 << 30  # maps waiting for post-processing
    type_info: TypeInfo | None = None
    mask_dir: Path | None = None
    tissue: tissue.TissueParams | None = None  # None = defaults
    min_tissue_fraction: float = 0.0
    save_mask: bool = False
    save_thumb: bool = False
    save_label_map: bool = False
    overwrite: bool = False
    model_name: str = ""
    quiet: bool = False
    phases: int | None = None  # sub-pixel phases (1, 2, 4); None = 4 on slides >= 1.5x finer

    def __post_init__(self) -> None:
        check_phases(self.phases)


@dataclass
class SlideResult:
    name: str
    status: str  # "done", "skipped" (finished before) or "failed"
    reason: str = ""
    n_nuclei: int = 0
    summary: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# worker side


@dataclass
class RegionJob:
    """One region's maps and where it lies; pickled to a worker."""

    region: Region
    maps: PredMaps
    nr_types: int | None
    width: int  # the slide at the frame's resolution
    height: int
    scale: float  # level-0 pixels per frame pixel
    proc_mpp: float | None = None  # resolution of the maps (scales the watershed's constants)
    # sub-pixel phases: the merged nucleus probability at the region's pixels (twice as fine
    # as the maps), to which the nuclei are mapped back; None: the maps are at its pixels
    prob: np.ndarray | None = None


def region_nuclei(job: RegionJob) -> tuple[list[dict], int]:
    """Post-process one region: its owned nuclei in whole-slide coordinates, and the cut count."""
    shape = job.maps.pred_map.shape if job.prob is None else job.prob.shape
    inst_map, nuclei = maps_to_nuclei(job.maps, job.nr_types, job.proc_mpp, shape, job.prob)
    keep, cut = owned_nuclei(nuclei, job.region, job.width, job.height)
    rx0, ry0 = job.region.read[:2]
    # outlines in whole-slide processing pixels (corner coordinates), as tile mode's GeoJSON
    shapes = nucleus_measurements(inst_map, keep, offset=(rx0, ry0))
    out = []
    for nid in keep:
        rec = nuclei[nid]
        (rmin, cmin), (rmax, cmax) = rec["bbox"]
        cx, cy = rec["centroid"][0] + rx0, rec["centroid"][1] + ry0
        rec["bbox"] = [[rmin + ry0, cmin + rx0], [rmax + ry0, cmax + rx0]]
        rec["centroid"] = [cx, cy]
        rec["contour"] = np.asarray(rec["contour"], np.int32) + np.array([rx0, ry0], np.int32)
        # pixel i at the processing resolution covers level-0 [i * s, (i + 1) * s)
        rec["xy"] = [(cx + 0.5) * job.scale - 0.5, (cy + 0.5) * job.scale - 0.5]
        rec["measurements"] = shapes[nid]
        out.append(rec)
    return out, cut


# ----------------------------------------------------------------------------------------------
# one slide


def default_tissue(slide, name: str, config: SlideConfig):
    """(thumbnail, its mpp, tissue mask, the mask's mpp) from the slide or the user's mask."""
    thumb, thumb_mpp = slide.thumbnail()
    if config.mask_dir is not None:
        candidates = sorted(
            p for p in Path(config.mask_dir).glob(f"{name}.*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not candidates:
            raise HoverNetError(
                f"no mask for {name} in {config.mask_dir}: add {name}.png (tissue white) or "
                "leave out --input_mask_dir"
            )
        try:
            mask = tissue.mask_from_user_image(read_rgb(candidates[0]))
            mask_mpp = tissue.mask_mpp(mask.shape, slide.dimensions, slide.mpp)
        except ValueError as exc:
            raise HoverNetError(f"{candidates[0]}: {exc}") from None
        return thumb, thumb_mpp, mask, mask_mpp
    params = config.tissue if config.tissue is not None else tissue.TissueParams()
    return thumb, thumb_mpp, tissue.tissue_mask(thumb, params, mpp=thumb_mpp), thumb_mpp


def default_opener(path: Path, config: SlideConfig):
    return open_slide(path, mpp=config.slide_mpp, magnification=config.slide_mag)


@contextlib.contextmanager
def _slide_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `<slide>.lock` (released by the OS even on SIGKILL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HoverNetError(
                f"{path.with_suffix('')} is being processed by another process (lock {path}); "
                "wait for it or give each process its own slides (--shard, torchrun)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def slide_phases(slide_mpp: float, proc_mpp: float, phases: int | None) -> int:
    """How many sub-pixel phases to run: `phases`, or 4 where the slide is at least 1.5x finer
    than the processing resolution (`hovernet.infer.resample.phase_offsets`), else 1."""
    return len(phase_offsets(slide_mpp / proc_mpp, phases))


@dataclass(frozen=True)
class SlideFrame:
    """Where a slide's nuclei are outlined: the processing resolution, or with sub-pixel phases
    twice as fine (regions are read there and shrunk for the network at each phase)."""

    proc_mpp: float
    n_phases: int
    width: int  # the slide at `mpp`
    height: int
    scale: float  # level-0 pixels per frame pixel

    @property
    def k(self) -> int:
        return 1 if self.n_phases == 1 else 2

    @property
    def mpp(self) -> float:
        return self.proc_mpp / self.k


class _SlideRun:
    """One slide's regions through the engine into its store. Its methods are the engine's
    item stream, `make_job` and `on_result`."""

    def __init__(self, model, slide, frame: SlideFrame, store: NucleusStore, bar: Progress):
        self.model, self.slide, self.frame, self.store, self.bar = model, slide, frame, store, bar
        self.offsets = phase_offsets(1 / frame.k, frame.n_phases)
        self.shapes: dict[int, tuple[int, ...]] = {}  # regions' read shapes (phases)
        self.phases = PhaseCollector(frame.n_phases)
        self.failures: list[str] = []
        self.nuclei = store.count()

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
            for phase in phase_inputs(image, self.offsets, 0.5):
                yield region, phase

    def make_job(self, region: Region, image: np.ndarray, maps: PredMaps) -> tuple[Any, int]:
        prob = None
        if self.frame.k > 1:
            done = self.phases.add(region.index, maps)
            if done is None:
                return None, 0  # the region's other phases are still to come
            maps, prob = merge_phase_maps(done, self.offsets, self.shapes.pop(region.index))
        f = self.frame
        nr_types = getattr(self.model, "nr_types", None)
        job = RegionJob(region, maps, nr_types, f.width, f.height, f.scale, f.proc_mpp, prob)
        return job, maps_nbytes(maps.pred_map, maps.type_softmax, prob)

    def on_result(self, region: Region, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.failures.append(f"region {region.index}: {type(exc).__name__}: {exc}")
            return
        nuclei, cut = result
        self.store.add_region(region.index, region.core, nuclei, cut)
        self.nuclei += len(nuclei)
        self.bar.advance(1, nuclei=self.nuclei)


def _frame(model, slide, name: str, config: SlideConfig, log) -> SlideFrame:
    meta = getattr(model, "meta", None)
    proc_mpp = float(resolve_proc_mpp(getattr(meta, "mpp", None), config.proc_mpp, config.proc_mag))
    if proc_mpp < slide.mpp / 1.01:
        log(
            f"warning: {name}: the slide ({slide.mpp:.3f} um/px) is coarser than the "
            f"processing resolution ({proc_mpp:.3f} um/px): regions are upsampled"
        )
    n_phases = slide_phases(slide.mpp, proc_mpp, config.phases)
    k = 1 if n_phases == 1 else 2
    if k > 1:
        log(
            f"{name}: the network runs on {n_phases} sub-pixel phases of each region "
            f"(read at {proc_mpp / k:g} um/px, shifted by half a network pixel), averaged: "
            f"finer outlines for {n_phases}x the network time (--phases 1: one)"
        )
    width, height = slide.size_at(proc_mpp / k)
    return SlideFrame(proc_mpp, n_phases, width, height, slide.dimensions[0] / width)


def _plan(model, frame: SlideFrame, config: SlideConfig) -> RegionPlan:
    net, k = model.geometry, frame.k
    geometry = ModelGeometry(net.mode, net.input_size * k, net.output_size * k)
    margin = config.margin if config.margin is not None else net.margin + NUCLEUS_MARGIN
    return plan_regions(frame.width, frame.height, geometry, config.region_size, margin * k)


def run_slide(
    model: torch.nn.Module,
    path: Path,
    config: SlideConfig,
    pool: ProcessPoolExecutor | None = None,
    log: Callable[[str], None] = print,
    opener: Callable[[Path, SlideConfig], Any] | None = None,
    tissue_fn: Callable[[Any, str, SlideConfig], tuple] | None = None,
) -> SlideResult:
    """Segment one slide into `config.output_dir` (see the module docstring); errors raise."""
    name = path.stem
    paths = output_paths(config.output_dir, name)
    if paths["summary"].exists() and not config.overwrite:
        return SlideResult(name, "skipped", "finished before (pass --overwrite to redo)")
    start = time.perf_counter()
    with _slide_lock(config.output_dir / f"{name}.lock"):
        if config.overwrite:
            remove_outputs(paths)
        with (opener or default_opener)(path, config) as slide:
            frame = _frame(model, slide, name, config, log)
            thumb, thumb_mpp, mask, mask_mpp = (tissue_fn or default_tissue)(slide, name, config)
            plan = _plan(model, frame, config)
            tissue_idx = plan.tissue_indices(mask, mask_mpp / frame.mpp, config.min_tissue_fraction)
            tissue_mm2 = tissue.tissue_area_mm2(mask, mask_mpp)
            if not tissue_idx:
                log(f"warning: {name}: no tissue found; exporting no nuclei (check the mask)")
            meta = {
                "format": FORMAT_VERSION,
                "slide": name,
                "dimensions": list(slide.dimensions),
                "slide_mpp": round(float(slide.mpp), 6),
                "proc_mpp": round(frame.proc_mpp, 6),
                "phases": frame.n_phases,
                "scale": frame.scale,
                "core": plan.core,
                "margin": plan.margin,
                "model": config.model_name,
                "nr_types": getattr(model, "nr_types", None),
                "tissue_regions": tissue_idx,
            }
            with NucleusStore(paths["store"], meta) as store:
                done = store.done_regions()
                todo = [plan.region(i) for i in tissue_idx if i not in done]
                with Progress(len(tissue_idx), name, "regions", config.quiet) as bar:
                    run = _SlideRun(model, slide, frame, store, bar)
                    bar.advance(len(tissue_idx) - len(todo), nuclei=run.nuclei)
                    engine = EngineConfig(
                        config.batch_size,
                        config.precision,
                        config.post_proc_workers,
                        config.mem_budget,
                        max_in_flight=max(2, 2 * config.post_proc_workers),
                    )
                    items = run.items(todo, config.read_workers)
                    stats = run_engine(
                        model, items, run.make_job, region_nuclei, run.on_result, engine, pool
                    )
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
                )
                summary = export_slide(store, paths, spec, log)
                wall = time.perf_counter() - start
                summary.update(
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
                write_summary(paths["summary"], summary)
    return SlideResult(name, "done", "", summary["nuclei"], summary)


# ----------------------------------------------------------------------------------------------
# many slides


def run_slides(
    model: torch.nn.Module,
    slides: list[Path],
    config: SlideConfig,
    log: Callable[[str], None] = print,
    opener: Callable[[Path, SlideConfig], Any] | None = None,
    tissue_fn: Callable[[Any, str, SlideConfig], tuple] | None = None,
) -> list[SlideResult]:
    """Run every slide; one that fails is reported with its reason and the rest go on."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    pool = make_pool(config.post_proc_workers)
    try:
        for k, path in enumerate(slides, start=1):
            try:
                result = run_slide(model, path, config, pool, log, opener, tissue_fn)
            except Exception as exc:  # report the slide and go on with the rest
                reason = (
                    str(exc) if isinstance(exc, HoverNetError) else f"{type(exc).__name__}: {exc}"
                )
                result = SlideResult(path.stem, "failed", reason)
            results.append(result)
            log(describe_result(k, len(slides), result))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def describe_result(k: int, total: int, r: SlideResult) -> str:
    """The line that reports slide `k` of `total`."""
    head = f"[{k}/{total}] {r.name}: "
    if r.status == "failed":
        return head + f"FAILED ({r.reason})"
    if r.status == "skipped":
        return head + f"skipped, {r.reason}"
    s = r.summary
    rate = s.get("tissue_mm2_per_min", 0.0)
    return head + (
        f"{r.n_nuclei} nuclei, {s.get('tissue_mm2', 0):.2f} mm^2 tissue, "
        f"{s.get('regions_tissue', 0)} regions in {s.get('wall_s', 0):.1f} s "
        f"({rate:.2f} mm^2/min)"
    )
