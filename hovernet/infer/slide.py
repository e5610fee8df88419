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
import glob
import os
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
from hovernet.infer.engine import EngineConfig, make_pool, maps_nbytes, read_ahead, run_engine
from hovernet.infer.regions import NUCLEUS_MARGIN, Region, owned_nuclei, plan_regions
from hovernet.infer.resample import phase_inputs, phase_offsets
from hovernet.infer.tile import PhaseCollector, merge_phase_maps, unique_stems
from hovernet.io.slides import IMAGE_SUFFIXES
from hovernet.io.type_info import TypeInfo
from hovernet.progress import Progress

SLIDE_FILE_SUFFIXES = IMAGE_SUFFIXES | {".dcm"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
EXPORTS = {
    "geojson": ".geojson.gz",
    "json": ".json",
    "csv": ".csv",
    "overlay": ".overlay.png",
    "summary": ".summary.json",
}
STORE_SUFFIX = ".db"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# inputs and ranks


def list_slides(spec: str | os.PathLike) -> list[Path]:
    """Slides named by `spec`: one slide file, a folder (its slide files, sorted), a glob
    pattern, or a list file (.txt/.lst: one path per line, # comments)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        found = sorted(
            p
            for p in path.iterdir()
            if p.is_file()
            and p.suffix.lower() in SLIDE_FILE_SUFFIXES
            and not p.name.startswith(".")
        )
        if not found:
            raise HoverNetError(
                f"no slides in {path}: put slide files there "
                f"({', '.join(sorted(SLIDE_FILE_SUFFIXES))})"
            )
        return _unique(found)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        files = [Path(ln) if Path(ln).is_absolute() else path.parent / ln for ln in lines]
        files = [f for f, ln in zip(files, lines, strict=True) if ln and not ln.startswith("#")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise HoverNetError(f"{path} lists slides that do not exist: {', '.join(missing[:5])}")
        if not files:
            raise HoverNetError(f"{path} lists no slides: put one slide path per line")
        return _unique(files)
    if path.is_file():
        return [path]
    if glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not found:
            raise HoverNetError(f"no slides match {text!r}: check the pattern")
        return _unique(found)
    raise HoverNetError(
        f"input {text} does not exist: pass a slide, a folder, a glob pattern or a list file"
    )


def _unique(files: list[Path]) -> list[Path]:
    return unique_stems(files, "slides")


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "i/n" (0 <= i < n) -> (i, n); None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise HoverNetError(f"--shard {text!r}: write it as i/n, e.g. 0/4 .. 3/4") from None
    if not 0 <= i < n:
        raise HoverNetError(f"--shard {text!r}: i must be in 0..n-1 (e.g. $SLURM_ARRAY_TASK_ID/n)")
    return i, n


def rank_and_world(shard: tuple[int, int] = (0, 1)) -> tuple[int, int]:
    """This process's share: torchrun's RANK/WORLD_SIZE within a `--shard` i/n."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    i, n = shard
    return i * world + rank, n * world


def my_slides(slides: list[Path], rank: int, world: int) -> list[Path]:
    """Every world-th slide from `rank`: each slide belongs to exactly one rank."""
    return slides[rank::world]


# ----------------------------------------------------------------------------------------------
# configuration and results


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
    tissue: Any = None  # hovernet.infer.tissue.TissueParams; None = defaults
    min_tissue_fraction: float = 0.0
    save_mask: bool = False
    save_thumb: bool = False
    save_label_map: bool = False
    overwrite: bool = False
    model_name: str = ""
    quiet: bool = False
    phases: int | None = None  # sub-pixel phases (1, 2, 4); None = 4 on slides >= 1.5x finer

    def __post_init__(self) -> None:
        from hovernet.infer.resample import check_phases

        check_phases(self.phases)


@dataclass
class SlideResult:
    name: str
    status: str  # "done", "skipped" (finished before) or "failed"
    reason: str = ""
    n_nuclei: int = 0
    summary: dict = field(default_factory=dict)


def output_paths(output_dir: Path, name: str) -> dict[str, Path]:
    paths = {k: output_dir / f"{name}{suffix}" for k, suffix in EXPORTS.items()}
    paths["store"] = output_dir / f"{name}{STORE_SUFFIX}"
    paths["mask"] = output_dir / f"{name}.mask.png"
    paths["thumb"] = output_dir / f"{name}.thumb.png"
    paths["instances"] = output_dir / f"{name}.instances.tif"
    paths["types"] = output_dir / f"{name}.types.tif"
    return paths


# ----------------------------------------------------------------------------------------------
# worker side


@dataclass
class _RegionJob:
    region: Region
    pred_map: np.ndarray
    type_softmax: np.ndarray | None
    nr_types: int | None
    width: int
    height: int
    scale: float
    proc_mpp: float | None = None  # resolution of the maps (scales the watershed's constants)
    # sub-pixel phases: the merged nucleus probability at the region's pixels (twice as fine
    # as the maps), to which the nuclei are mapped back; None: the maps are at its pixels
    prob: np.ndarray | None = None


def _region_work(job: _RegionJob) -> tuple[list[dict], int]:
    """Post-process one region: its owned nuclei in whole-slide coordinates, and the cut count."""
    from hovernet.infer.measure import nucleus_measurements
    from hovernet.infer.postprocess import postprocess
    from hovernet.infer.resample import nuclei_to_input

    inst_map, nuclei = postprocess(job.pred_map, job.nr_types, job.type_softmax, job.proc_mpp)
    if job.prob is not None:
        inst_map, nuclei = nuclei_to_input(inst_map, nuclei, job.prob.shape, job.prob)
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


def _default_tissue(slide, name: str, config: SlideConfig):
    """(thumbnail, its mpp, tissue mask, the mask's mpp) from the slide or the user's mask."""
    from hovernet.infer import tissue

    thumb, thumb_mpp = slide.thumbnail()
    if config.mask_dir is not None:
        from hovernet.io.slides import read_rgb

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


def _open_default(path: Path, config: SlideConfig):
    from hovernet.io.wsi import open_slide

    return open_slide(path, mpp=config.slide_mpp, magnification=config.slide_mag)


def _proc_mpp(model: torch.nn.Module, config: SlideConfig) -> float:
    from hovernet.io.wsi import resolve_proc_mpp

    meta = getattr(model, "meta", None)
    return float(resolve_proc_mpp(getattr(meta, "mpp", None), config.proc_mpp, config.proc_mag))


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


def _phased(
    items: Iterator[tuple[Region, np.ndarray]],
    offsets: list[tuple[int, int]],
    shapes: dict[int, tuple[int, ...]],
) -> Iterator[tuple[Region, np.ndarray]]:
    """Each region read at twice the processing resolution -> its phases at the processing
    resolution (`shapes` records the read's shape for merging the maps)."""
    for region, image in items:
        shapes[region.index] = image.shape
        for phase in phase_inputs(image, offsets, 0.5):
            yield region, phase


def _read_regions(
    slide, regions: list[Region], mpp: float, workers: int
) -> Iterator[tuple[Region, np.ndarray]]:
    """(region, RGB of its read box) in order, `workers` threads reading ahead."""

    def read(region: Region) -> np.ndarray:
        x0, y0, x1, y1 = region.read
        return slide.read(x0, y0, x1 - x0, y1 - y0, mpp)

    for region, future in read_ahead(regions, read, workers):
        yield region, future.result()


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
    from hovernet.infer.tissue import tissue_area_mm2
    from hovernet.io.store import NucleusStore

    name = path.stem
    paths = output_paths(config.output_dir, name)
    if paths["summary"].exists() and not config.overwrite:
        return SlideResult(name, "skipped", "finished before (pass --overwrite to redo)")
    start = time.perf_counter()
    with _slide_lock(config.output_dir / f"{name}.lock"):
        if config.overwrite:
            for key in ("store", *EXPORTS, "mask", "thumb", "instances", "types"):
                paths[key].unlink(missing_ok=True)
            for extra in ("-wal", "-shm"):
                Path(f"{paths['store']}{extra}").unlink(missing_ok=True)
        with (opener or _open_default)(path, config) as slide:
            proc_mpp = _proc_mpp(model, config)
            if proc_mpp < slide.mpp / 1.01:
                log(
                    f"warning: {name}: the slide ({slide.mpp:.3f} um/px) is coarser than the "
                    f"processing resolution ({proc_mpp:.3f} um/px): regions are upsampled"
                )
            n_phases = slide_phases(slide.mpp, proc_mpp, config.phases)
            # the pixels nuclei are outlined in: the processing resolution, or with phases
            # twice as fine (regions are read there and shrunk for the network at each phase)
            k = 1 if n_phases == 1 else 2
            frame_mpp = proc_mpp / k
            if k > 1:
                log(
                    f"{name}: the network runs on {n_phases} sub-pixel phases of each region "
                    f"(read at {frame_mpp:g} um/px, shifted by half a network pixel), averaged: "
                    f"finer outlines for {n_phases}x the network time (--phases 1: one)"
                )
            width, height = slide.size_at(frame_mpp)
            scale = slide.dimensions[0] / width
            thumb, thumb_mpp, mask, mask_mpp = (tissue_fn or _default_tissue)(slide, name, config)
            net = model.geometry
            geometry = ModelGeometry(net.mode, net.input_size * k, net.output_size * k)
            margin = config.margin if config.margin is not None else net.margin + NUCLEUS_MARGIN
            plan = plan_regions(width, height, geometry, config.region_size, margin * k)
            tissue_idx = plan.tissue_indices(mask, mask_mpp / frame_mpp, config.min_tissue_fraction)
            tissue_mm2 = tissue_area_mm2(mask, mask_mpp)
            if not tissue_idx:
                log(f"warning: {name}: no tissue found; exporting no nuclei (check the mask)")
            meta = {
                "format": FORMAT_VERSION,
                "slide": name,
                "dimensions": list(slide.dimensions),
                "slide_mpp": round(float(slide.mpp), 6),
                "proc_mpp": round(proc_mpp, 6),
                "phases": n_phases,
                "scale": scale,
                "core": plan.core,
                "margin": plan.margin,
                "model": config.model_name,
                "nr_types": getattr(model, "nr_types", None),
                "tissue_regions": tissue_idx,
            }
            with NucleusStore(paths["store"], meta) as store:
                done = store.done_regions()
                todo = [plan.region(i) for i in tissue_idx if i not in done]
                failures: list[str] = []
                nuclei_so_far = store.count()
                with Progress(len(tissue_idx), name, "regions", config.quiet) as bar:
                    bar.advance(len(tissue_idx) - len(todo), nuclei=nuclei_so_far)
                    nr_types = getattr(model, "nr_types", None)
                    offsets = phase_offsets(1 / k, n_phases)
                    shapes: dict[int, tuple[int, ...]] = {}  # regions' read shapes (phases)
                    phases = PhaseCollector(n_phases)

                    def make_job(region: Region, image: np.ndarray, maps) -> tuple[Any, int]:
                        prob = None
                        if k > 1:
                            done = phases.add(region.index, maps)
                            if done is None:
                                return None, 0  # the region's other phases are still to come
                            maps, prob = merge_phase_maps(done, offsets, shapes.pop(region.index))
                        job = _RegionJob(
                            region,
                            maps.pred_map,
                            maps.type_softmax,
                            nr_types,
                            width,
                            height,
                            scale,
                            proc_mpp,
                            prob,
                        )
                        return job, maps_nbytes(maps.pred_map, maps.type_softmax, prob)

                    def on_result(region: Region, result, exc: BaseException | None) -> None:
                        nonlocal nuclei_so_far
                        if exc is not None:
                            failures.append(f"region {region.index}: {type(exc).__name__}: {exc}")
                            return
                        nuclei, cut = result
                        store.add_region(region.index, region.core, nuclei, cut)
                        nuclei_so_far += len(nuclei)
                        bar.advance(1, nuclei=nuclei_so_far)

                    engine = EngineConfig(
                        config.batch_size,
                        config.precision,
                        config.post_proc_workers,
                        config.mem_budget,
                        max_in_flight=max(2, 2 * config.post_proc_workers),
                    )
                    items = _read_regions(slide, todo, frame_mpp, config.read_workers)
                    if k > 1:
                        items = _phased(items, offsets, shapes)
                    stats = run_engine(
                        model, items, make_job, _region_work, on_result, engine, pool
                    )
                if failures:
                    raise HoverNetError(
                        f"{len(failures)} region(s) failed (rerun to retry them): {failures[0]}"
                    )
                mag = (
                    slide.magnification * slide.mpp / frame_mpp
                    if slide.magnification
                    else 10.0 / frame_mpp
                )
                summary = _export(
                    store, slide, paths, config, name, thumb, thumb_mpp, mask, frame_mpp, mag, log
                )
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
                from hovernet.io.slide_exports import write_summary

                write_summary(paths["summary"], summary)
    return SlideResult(name, "done", "", summary["nuclei"], summary)


def _export(store, slide, paths, config, name, thumb, thumb_mpp, mask, frame_mpp, mag, log) -> dict:
    """Write the exports from the store; `frame_mpp` is the resolution of its coordinates."""
    from hovernet.io import slide_exports as ex
    from hovernet.io.writers import class_of

    ex.export_geojson(paths["geojson"], store, config.type_info, name)
    ex.export_csv(paths["csv"], store, config.type_info)
    ex.export_json(paths["json"], store, mag)
    ex.export_overlay(paths["overlay"], thumb, thumb_mpp / frame_mpp, store, config.type_info)
    if config.save_mask:
        ex.write_png(paths["mask"], mask)
    if config.save_thumb:
        ex.write_png(paths["thumb"], thumb)
    if config.save_label_map:
        _write_label_maps(store, paths, slide.size_at(frame_mpp), frame_mpp)
    per_class: dict[str, int] = {}
    for t, n in sorted(store.counts_by_type().items(), key=lambda kv: (kv[0] is None, kv[0])):
        per_class[class_of({"type": t}, config.type_info)[0]] = n
    n_cut = store.n_cut()
    if n_cut:
        log(f"warning: {name}: {n_cut} nuclei touch a region border; use a larger margin")
    return {
        "slide": str(slide.path),
        "dimensions": list(slide.dimensions),
        "slide_mpp": float(slide.mpp),
        "proc_mpp": float(store.meta["proc_mpp"]),
        "phases": int(store.meta.get("phases", 1)),
        "outline_mpp": frame_mpp,  # resolution of the JSON coordinates and label maps
        "mag": mag,
        "nuclei": store.count(),
        "nuclei_per_class": per_class,
        "nuclei_cut_by_region_border": n_cut,
        "outputs": sorted(p.name for k, p in paths.items() if k != "summary" and p.exists()),
    }


def _write_label_maps(store, paths: dict[str, Path], size: tuple[int, int], mpp: float) -> None:
    """Instance ids (export numbering) and types as tiled pyramidal TIFFs at `mpp` (the store's
    coordinates: the processing resolution, or twice as fine with phases)."""
    import cv2

    from hovernet.io.pyramid import write_label_pyramid

    width, height = size
    ids = {rec["store_id"]: n for n, rec in enumerate(store.nuclei(), start=1)}

    def tile_fn(kind: str):
        def read_tile(x: int, y: int, w: int, h: int) -> np.ndarray:
            out = np.zeros((h, w), np.int32)
            for rec in store.nuclei((x, y, x + w, y + h)):
                value = ids[rec["store_id"]] if kind == "instances" else (rec["type"] or 0)
                pts = (rec["contour"] - np.array([x, y], np.int32)).reshape(-1, 1, 2)
                cv2.fillPoly(out, [pts], int(value))
            return out.astype(np.uint32 if kind == "instances" else np.uint8)

        return read_tile

    for kind in ("instances", "types"):
        dtype = np.uint32 if kind == "instances" else np.uint8
        write_label_pyramid(paths[kind], (height, width), tile_fn(kind), mpp, dtype=dtype)


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
            log(_describe(k, len(slides), result))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _describe(k: int, total: int, r: SlideResult) -> str:
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


def default_workers() -> int:
    """Post-processing processes: the CPUs this process may use, less one for the network."""
    from hovernet.resources import available_cpus

    return max(1, min(8, available_cpus() - 1))
