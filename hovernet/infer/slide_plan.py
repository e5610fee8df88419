"""What slide mode settles before the network runs, with the slide open once:
`prepare_slide` -> `SlidePlan` (the frame nuclei are outlined in, the run's record, the tissue
mask, the region plan and the regions that hold tissue, their area, the store's meta and what
the exports need). Also the slide's resolution (`resolve_auto_mpp`) and whether a finished
slide was made by the same run (`finished_differs`).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hovernet.config import ModelGeometry
from hovernet.grids import Grid
from hovernet.infer import resample
from hovernet.infer.backends import effective_precision
from hovernet.infer.phased import Phases
from hovernet.infer.regions import NUCLEUS_MARGIN, Region, RegionPlan, TissueBoxes, plan_regions
from hovernet.infer.run_record import RunRecord, recorded_run
from hovernet.infer.slide_setup import SlideConfig
from hovernet.infer.slide_tissue import default_tissue, no_tissue_warning, processed_mask
from hovernet.infer.tissue import tissue_area_mm2
from hovernet.io.input_checks import refuse_colourless
from hovernet.io.names import output_stem
from hovernet.io.slide_exports import ExportSpec
from hovernet.io.wsi import open_slide, resolve_proc_mpp

FORMAT_VERSION = 1  # of the store


def slide_phases(slide_mpp: float, proc_mpp: float, phases: int | None) -> int:
    """How many sub-pixel phases to run: `phases`, or 4 where the slide is at least 1.5x finer
    than the processing resolution (`hovernet.infer.resample.phase_offsets`), else 1."""
    return len(resample.phase_offsets(slide_mpp / proc_mpp, phases))


def phase_factor(n_phases: int) -> int:
    """Frame pixels per processing pixel: 1 at one phase, 2 with sub-pixel phases."""
    return 1 if n_phases == 1 else 2


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
        return phase_factor(self.n_phases)

    @property
    def mpp(self) -> float:
        return self.proc_mpp / self.k

    @property
    def grid(self) -> Grid:
        """The frame's pixel grid (the outline grid)."""
        return Grid(self.mpp, self.scale)

    @property
    def phases(self) -> Phases:
        """How the network sees a region read at the frame: shrunk to the processing
        resolution at each phase (one phase: as read)."""
        k = self.k
        offsets = resample.phase_offsets(1 / k, self.n_phases)
        return Phases(tuple(offsets), None if k == 1 else 1 / k)


def make_frame(slide, config: SlideConfig, model_mpp: float | None, name: str, log) -> SlideFrame:
    """The frame of `slide` for a model trained at `model_mpp` (um/px, None: unknown), at the
    processing resolution and phases `config` asks for; `log` gets its notes."""
    proc = float(resolve_proc_mpp(model_mpp, config.proc_mpp, config.proc_mag))
    if proc < slide.mpp / 1.01:
        log(
            f"warning: {name}: the slide ({slide.mpp:.3f} um/px) is coarser than the "
            f"processing resolution ({proc:.3f} um/px): regions are upsampled"
        )
    n_phases = slide_phases(slide.mpp, proc, config.phases)
    k = phase_factor(n_phases)
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


def slide_record(
    model: torch.nn.Module, config: SlideConfig, slide_mpp: float, frame: SlideFrame
) -> RunRecord:
    """The run's identity: the checkpoint's content hash and the settings that change a slide's
    nuclei (resolved for this slide), never a display name. A finished slide counts as done,
    and an unfinished one resumes, only for the same (`finished_differs`, the store's meta)."""
    return RunRecord.of(
        config.model_id,
        precision=effective_precision(model, config.precision),
        slide_mpp=round(float(slide_mpp), 6),
        proc_mpp=round(frame.proc_mpp, 6),
        phases=frame.n_phases,
        margin=config.margin,
        tissue=config.tissue_source().describe(),
        tissue_params=repr(config.tissue) if config.tissue is not None else None,
        min_tissue_fraction=config.min_tissue_fraction,
        features=config.features,
        stain_norm=config.stain_norm,
    )


def finished_differs(summary_path: Path, record: RunRecord) -> str | None:
    """None when the finished slide's run matches `record`, else what differs. Only the fields
    of `record` are compared: a field an older version recorded besides them (its display name,
    "model") does not make a run differ."""
    try:
        old = recorded_run(summary_path, "run")
    except (OSError, ValueError):
        return "its summary cannot be read"
    if not isinstance(old, dict):
        return "its summary records no model (made by an older version)"
    return record.differences(old)


# ----------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class SlideContext:
    """What a caller plugs into a slide's run besides its settings: where lines go, how a slide
    is opened and its tissue found (None: `default_opener`, `default_tissue`; tests give
    in-memory slides), a post-processing pool kept over slides, and a note for the status."""

    log: Callable[[str], None] = print
    opener: Callable[[Path, SlideConfig], Any] | None = None
    tissue_fn: Callable[[Any, str, SlideConfig], tuple] | None = None
    pool: ProcessPoolExecutor | None = None
    status_note: str = ""

    def open(self, path: Path, config: SlideConfig):
        return (self.opener or default_opener)(path, config)


@dataclass(frozen=True)
class SlidePlan:
    """Everything decided about a slide before the network runs (see the module docstring).
    `mask` (bool, one pixel = `mask_mpp` um) is the tissue; `tissue_indices` the regions of
    `regions` that hold some; `tissue_mm2` the tissue area they cover."""

    name: str
    frame: SlideFrame
    record: RunRecord
    regions: RegionPlan
    mask: np.ndarray
    mask_mpp: float
    tissue_indices: tuple[int, ...]
    tissue_mm2: float
    store_meta: dict[str, Any]
    exports: ExportSpec
    estimate: Any = None  # --slide_mpp auto: the estimate from the nuclei (the summary says it)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != bool:
            raise ValueError(
                f"a slide plan's mask is 2-D bool, got {self.mask.dtype} {self.mask.shape}"
            )
        if any(not 0 <= i < len(self.regions) for i in self.tissue_indices):
            raise ValueError(f"tissue regions outside the plan's {len(self.regions)}")
        if not self.tissue_mm2 >= 0:
            raise ValueError(f"tissue area must be at least 0, got {self.tissue_mm2}")

    @property
    def mask_grid(self) -> Grid:
        """The tissue mask's pixel grid."""
        return Grid(self.mask_mpp)

    @property
    def tissue_boxes(self) -> TissueBoxes:
        """The mask for box queries from the frame (which windows hold tissue)."""
        return TissueBoxes.of(self.mask, self.mask_grid, self.frame.grid)

    def todo(self, done: set[int]) -> list[Region]:
        """The tissue regions not in `done` (stored before), in order."""
        return [self.regions.region(i) for i in self.tissue_indices if i not in done]


def prepare_slide(
    model: torch.nn.Module,
    slide,
    config: SlideConfig,
    context: SlideContext,
    name: str,
    estimate: Any = None,
) -> SlidePlan:
    """The plan of the open `slide` (outputs named `name`): its frame, record, tissue mask and
    regions; `context.log` gets the frame's notes and a warning where no region holds tissue."""
    frame = make_frame(slide, config, resample.model_mpp(model), name, context.log)
    thumb, thumb_mpp, mask, mask_mpp = (context.tissue_fn or default_tissue)(slide, name, config)
    regions = plan_slide(model.geometry, frame, config.region_size, config.margin)
    mask = np.asarray(mask, bool)
    mask_grid = Grid(mask_mpp)
    tissue = TissueBoxes.of(mask, mask_grid, frame.grid)
    tissue_idx = regions.tissue_indices(tissue, config.min_tissue_fraction)
    covered = processed_mask(regions, mask, mask_grid, frame.grid, tissue_idx)
    if not tissue_idx:
        context.log(no_tissue_warning(name, config.tissue_source()))
    record = slide_record(model, config, slide.mpp, frame)
    meta = _store_meta(slide, name, frame, regions, model)
    meta.update(tissue_regions=tissue_idx, run=record.to_dict())
    exports = _export_spec(slide, frame, config, (thumb, thumb_mpp, mask, mask_mpp), covered)
    return SlidePlan(
        name, frame, record, regions, mask, mask_mpp, tuple(tissue_idx),
        tissue_area_mm2(covered, mask_mpp), meta, exports, estimate,
    )  # fmt: skip


def _store_meta(slide, name: str, frame: SlideFrame, regions: RegionPlan, model) -> dict:
    """The store's settings (an existing store must match them), but the tissue regions and the
    run's record."""
    return {
        "format": FORMAT_VERSION,
        "slide": name,
        "dimensions": list(slide.dimensions),
        "slide_mpp": round(float(slide.mpp), 6),
        "proc_mpp": round(frame.proc_mpp, 6),
        "phases": frame.n_phases,
        "scale": frame.scale,
        "core": regions.core,
        "margin": regions.margin,
        "nr_types": getattr(model, "nr_types", None),
    }


def _export_spec(
    slide, frame: SlideFrame, config: SlideConfig, tissue: tuple, covered: np.ndarray
) -> ExportSpec:
    """What the exports need besides the store: `tissue` is (thumbnail, its mpp, mask, its
    mpp), `covered` the mask where processed regions cover it."""
    thumb, thumb_mpp, mask, mask_mpp = tissue
    mag = slide.magnification * slide.mpp / frame.mpp if slide.magnification else 10.0 / frame.mpp
    return ExportSpec(
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
        density_mask=covered,
    )
