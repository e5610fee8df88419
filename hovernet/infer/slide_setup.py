"""What slide mode settles before the network runs: the frame nuclei are outlined in, the
region plan, the tissue mask (and which nuclei it keeps), the run's identity for honest reruns,
and the per-slide lock. Front-end helpers of `hovernet.infer.slide`; no I/O but the slide's
own reads and the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet.config import ModelGeometry
from hovernet.errors import HoverNetError
from hovernet.infer import tissue
from hovernet.infer.backends import effective_precision
from hovernet.infer.postprocess import PostprocessParams, hv_ranges
from hovernet.infer.predict import predict_phases_many
from hovernet.infer.regions import NUCLEUS_MARGIN, RegionPlan, plan_regions
from hovernet.infer.resample import check_phases, phase_offsets
from hovernet.io.input_checks import refuse_colourless
from hovernet.io.names import output_stem
from hovernet.io.slides import IMAGE_SUFFIXES, read_mask_image
from hovernet.io.type_info import TypeInfo
from hovernet.io.wsi import open_slide, resolve_proc_mpp


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


def make_frame(
    model_mpp: float | None,
    slide,
    name: str,
    proc_mpp: float | None,
    proc_mag: float | None,
    phases: int | None,
    log,
) -> SlideFrame:
    """The frame of `slide` for a model trained at `model_mpp` (um/px, None: unknown)."""
    proc = float(resolve_proc_mpp(model_mpp, proc_mpp, proc_mag))
    if proc < slide.mpp / 1.01:
        log(
            f"warning: {name}: the slide ({slide.mpp:.3f} um/px) is coarser than the "
            f"processing resolution ({proc:.3f} um/px): regions are upsampled"
        )
    n_phases = slide_phases(slide.mpp, proc, phases)
    k = 1 if n_phases == 1 else 2
    if k > 1:
        log(
            f"{name}: the network runs on {n_phases} sub-pixel phases of each region "
            f"(read at {proc / k:g} um/px, shifted by half a network pixel), averaged: "
            f"finer outlines for {n_phases}x the network time (--phases 1: one)"
        )
    width, height = slide.size_at(proc / k)
    return SlideFrame(proc, n_phases, width, height, slide.dimensions[0] / width)


def plan_slide(
    net: ModelGeometry, frame: SlideFrame, region_size: int, margin: int | None
) -> RegionPlan:
    """Regions of `region_size` frame pixels with a margin of the network's plus the widest
    nucleus (or `margin` processing pixels), both in the frame's pixels."""
    k = frame.k
    geometry = ModelGeometry(net.mode, net.input_size * k, net.output_size * k)
    margin = margin if margin is not None else net.margin + NUCLEUS_MARGIN
    return plan_regions(frame.width, frame.height, geometry, region_size, margin * k)


# ----------------------------------------------------------------------------------------------
# tissue


@dataclass(frozen=True)
class TissueSource:
    """Where a slide's tissue mask comes from: a user's mask image (`mask_dir/<slide>.*`),
    automatic detection on the thumbnail (`params`), or none (`detect=False`: the whole slide)."""

    mask_dir: Path | None = None
    params: tissue.TissueParams | None = None
    detect: bool = True

    def describe(self) -> str:
        if self.mask_dir is not None:
            return f"user masks in {self.mask_dir}"
        return "automatic" if self.detect else "whole slide"


def tissue_of(slide, name: str, source: TissueSource):
    """(thumbnail, its mpp, tissue mask, the mask's mpp) from the slide or the user's mask.
    A slide whose thumbnail has practically no colour (greyscale) is a HoverNetError."""
    thumb, thumb_mpp = slide.thumbnail()
    refuse_colourless(slide.path, thumb)
    if source.mask_dir is not None:
        candidates = sorted(
            p for p in Path(source.mask_dir).glob(f"{name}.*") if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not candidates:
            raise HoverNetError(
                f"no mask for {name} in {source.mask_dir}: add {name}.png (tissue white) or "
                "leave out --input_mask_dir"
            )
        try:
            mask = tissue.mask_from_user_image(read_mask_image(candidates[0]))
            mask_mpp = tissue.mask_mpp(mask.shape, slide.dimensions, slide.mpp)
        except ValueError as exc:
            raise HoverNetError(f"{candidates[0]}: {exc}") from None
        return thumb, thumb_mpp, mask, mask_mpp
    if not source.detect:
        return thumb, thumb_mpp, np.ones(thumb.shape[:2], bool), thumb_mpp
    params = source.params if source.params is not None else tissue.TissueParams()
    return thumb, thumb_mpp, tissue.tissue_mask(thumb, params, mpp=thumb_mpp), thumb_mpp


def no_tissue_warning(name: str, source: TissueSource) -> str:
    if source.mask_dir is not None:
        return (
            f"warning: {name}: its mask in {source.mask_dir} marks no tissue; exporting no "
            "nuclei (check the mask: tissue is any non-black pixel)"
        )
    return (
        f"warning: {name}: no tissue found on the thumbnail; exporting no nuclei (if the slide "
        "has tissue, pass --no_tissue_detection to segment the whole slide)"
    )


def processed_tissue_mm2(
    plan: RegionPlan, mask: np.ndarray, mask_mpp: float, frame_mpp: float, indices: list[int]
) -> float:
    """Tissue area (mm^2) that the processed regions cover: mask pixels whose centre lies in a
    processed region's core. Every region the mask touches is processed by default, and then
    this is the whole mask's area."""
    covered = processed_mask(plan, mask, mask_mpp, frame_mpp, indices)
    return tissue.tissue_area_mm2(covered, mask_mpp)


def processed_mask(
    plan: RegionPlan, mask: np.ndarray, mask_mpp: float, frame_mpp: float, indices: list[int]
) -> np.ndarray:
    """The tissue mask where processed regions cover it (see `processed_tissue_mm2`)."""
    scale = mask_mpp / frame_mpp  # frame pixels per mask pixel
    h, w = mask.shape
    covered = np.zeros((h, w), bool)
    for index in indices:
        x0, y0, x1, y1 = plan.region(index).core
        # mask pixel i has its centre at (i + 0.5) * scale frame pixels
        r0, r1 = math.ceil(y0 / scale - 0.5), math.ceil(y1 / scale - 0.5)
        c0, c1 = math.ceil(x0 / scale - 0.5), math.ceil(x1 / scale - 0.5)
        covered[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = True
    return mask & covered


# ----------------------------------------------------------------------------------------------
# the run and its identity

MIN_DENSITY_GRID_UM = 10.0  # a density cell holds a few nuclei at least


@dataclass(frozen=True)
class SlideConfig:
    """Everything `hovernet infer wsi` needs besides the model and the slide list."""

    output_dir: Path
    proc_mpp: float | None = None
    proc_mag: float | None = None
    slide_mpp: float | str | None = None  # "auto": estimated from the nuclei (no MPP recorded)
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
    detect_tissue: bool = True  # False: the whole slide is tissue (no mask_dir)
    min_tissue_fraction: float = 0.0
    save_mask: bool = False
    save_thumb: bool = False
    save_label_map: bool = False
    overwrite: bool = False
    model_name: str = ""  # shown in the summary and the viewer; not part of the run's identity
    model_id: str = ""  # the checkpoint's content hash: a finished slide counts for it only
    quiet: bool = False
    phases: int | None = None  # sub-pixel phases (1, 2, 4); None = 1
    features: bool = True  # per-nucleus colour and texture features (hovernet.infer.features)
    density_grid_um: float = 100.0  # density maps' cell side in microns; 0: none
    stain_norm: str | None = None  # --stain_norm's reference statistics (set on the model)

    def __post_init__(self) -> None:
        check_phases(self.phases)
        if self.density_grid_um and not self.density_grid_um >= MIN_DENSITY_GRID_UM:
            raise HoverNetError(
                f"--density_grid_um {self.density_grid_um:g}: give a cell side of at least "
                f"{MIN_DENSITY_GRID_UM:g} um (e.g. 100), or 0 for no density maps"
            )
        if isinstance(self.slide_mpp, str) and self.slide_mpp != "auto":
            raise HoverNetError(
                f"--slide_mpp {self.slide_mpp!r}: give microns per pixel (e.g. 0.25) or auto"
            )
        if self.mask_dir is not None and not self.detect_tissue:
            raise HoverNetError("give --input_mask_dir or --no_tissue_detection, not both")

    def tissue_source(self) -> TissueSource:
        return TissueSource(self.mask_dir, self.tissue, self.detect_tissue)


def default_tissue(slide, name: str, config: SlideConfig):
    """(thumbnail, its mpp, tissue mask, the mask's mpp) as `config` asks."""
    return tissue_of(slide, name, config.tissue_source())


def default_opener(path: Path, config: SlideConfig):
    return open_slide(path, mpp=config.slide_mpp, magnification=config.slide_mag)


def resolve_auto_mpp(model, path: Path, config: SlideConfig, opener, log):
    """`--slide_mpp auto`: (the config with the slide's resolution, its estimate or None). The
    file's own resolution when it records one; else estimated from the nuclei
    (`hovernet.infer.resolution.estimate_slide_mpp`), printed and returned for the summary."""
    from hovernet.infer.resolution import estimate_slide_mpp
    from hovernet.io.wsi import recorded_mpp

    name = output_stem(path)
    if opener is None:
        known = recorded_mpp(path)
        if known is not None:
            log(f"{name}: the file records {known:g} um/px (used; --slide_mpp auto estimates "
                "only where a file records none)")  # fmt: skip
            return replace(config, slide_mpp=None), None
    with (opener or default_opener)(path, replace(config, slide_mpp=1.0)) as probe:
        refuse_colourless(path, probe.thumbnail()[0])  # before the estimate finds no nuclei
        estimate = estimate_slide_mpp(
            probe, model, name=name, batch_size=config.batch_size, precision=config.precision
        )
    log(f"{name}: {estimate.describe()}")
    return replace(config, slide_mpp=estimate.mpp), estimate


def run_key(
    model: torch.nn.Module, config: SlideConfig, slide_mpp: float, frame: SlideFrame
) -> dict[str, Any]:
    """The run's identity: the checkpoint's content hash and the settings that change a slide's
    nuclei (resolved for this slide), never a display name. A finished slide counts as done,
    and an unfinished one resumes, only for the same (`finished_differs`)."""
    return {
        "model_id": config.model_id,
        "precision": effective_precision(model, config.precision),
        "slide_mpp": round(float(slide_mpp), 6),
        "proc_mpp": round(frame.proc_mpp, 6),
        "phases": frame.n_phases,
        "margin": config.margin,
        "tissue": config.tissue_source().describe(),
        "tissue_params": repr(config.tissue) if config.tissue is not None else None,
        "min_tissue_fraction": config.min_tissue_fraction,
        "features": config.features,
        "stain_norm": config.stain_norm,
    }


def finished_differs(summary_path: Path, key: dict[str, Any]) -> str | None:
    """None when the finished slide's run matches `key`, else what differs. Only the fields of
    `key` are compared: a field an older version recorded besides them (its display name,
    "model") does not make a run differ."""
    try:
        old = json.loads(summary_path.read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError):
        return "its summary cannot be read"
    if not isinstance(old, dict):
        return "its summary records no model (made by an older version)"
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in key.items() if old.get(k) != v]
    return "; ".join(diff) or None


# ----------------------------------------------------------------------------------------------
# the HV gradient ranges

CALIBRATION_SIZE = 512  # side of a calibration window, processing pixels
CALIBRATION_WINDOWS = 4  # the most tissue-rich windows of a fixed grid over the slide


def calibration_windows(
    mask: np.ndarray, mask_scale: float, width: int, height: int
) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) boxes at the processing resolution: the CALIBRATION_WINDOWS cells of a
    fixed CALIBRATION_SIZE grid (from the slide's origin, whatever the region size) with the
    most tissue (`mask`: one pixel covers `mask_scale` processing pixels per side)."""
    size = CALIBRATION_SIZE
    scored = []
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            x1, y1 = min(width, x0 + size), min(height, y0 + size)
            r0, r1 = math.floor(y0 / mask_scale), math.ceil(y1 / mask_scale)
            c0, c1 = math.floor(x0 / mask_scale), math.ceil(x1 / mask_scale)
            cell = mask[r0:r1, c0:c1]
            tissue = float(cell.mean()) if cell.size else 0.0
            if tissue > 0:
                scored.append((-tissue * (x1 - x0) * (y1 - y0), y0, x0, (x0, y0, x1, y1)))
    return [box for *_, box in sorted(scored)[:CALIBRATION_WINDOWS]]


def calibrate_hv_ranges(
    model, slide, frame: SlideFrame, mask: np.ndarray, mask_mpp: float, batch: int, precision: str
) -> list[float]:
    """The extremes the original's watershed normalises the HV maps and their gradients by
    (`hovernet.infer.postprocess.hv_ranges`), over a few tissue-rich windows and on the maps
    the regions get (the processing resolution; with phases read twice as fine, run at the
    phases and merged): measured once per slide, so that every region is normalised alike and
    the nuclei do not depend on the region size (a weakly trained model's extremes vary from
    region to region; the original measures them over each image it is given)."""
    width, height = slide.size_at(frame.proc_mpp)
    boxes = calibration_windows(mask, mask_mpp / frame.proc_mpp, width, height)
    if not boxes:
        return []  # no tissue: no region is run
    ksize = PostprocessParams.for_mpp(frame.proc_mpp).sobel_ksize
    k = frame.k
    offsets = phase_offsets(1 / k, frame.n_phases)
    images = [
        slide.read(k * x0, k * y0, k * (x1 - x0), k * (y1 - y0), frame.mpp)
        for x0, y0, x1, y1 in boxes
    ]
    scale = None if k == 1 else 1 / k
    maps = [
        (pred.pred_map[..., -2], pred.pred_map[..., -1])
        for pred, _ in predict_phases_many(model, images, scale, offsets, batch, precision)
    ]
    border = min(ksize, min(h.shape[0] for h, _ in maps) // 4)  # the Sobel's reach into the mirror
    return list(hv_ranges(maps, ksize, border))


# ----------------------------------------------------------------------------------------------
# the lock


@contextlib.contextmanager
def slide_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `<slide>.lock` (released by the OS even on SIGKILL), removed when
    the slide's run ends (while still held, so no other process can take the old file)."""
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
            path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)
