"""The settings of slide mode: `SlideConfig` (everything `hovernet infer wsi` needs besides the
model and the slide list) and `TissueSource` (where a slide's tissue mask comes from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hovernet.errors import HoverNetError
from hovernet.infer import tissue
from hovernet.infer.resample import check_phases
from hovernet.io.type_info import TypeInfo


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
