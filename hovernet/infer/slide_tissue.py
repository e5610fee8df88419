"""A slide's tissue: the mask its settings ask for (`tissue_of`: a user's mask image, detection
on the thumbnail, or the whole slide) and the part of it that the processed regions cover
(`processed_mask`). Reads the slide's thumbnail and the user's mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.grids import Grid
from hovernet.infer import tissue
from hovernet.infer.regions import RegionPlan
from hovernet.infer.slide_setup import SlideConfig, TissueSource
from hovernet.io.input_checks import refuse_colourless
from hovernet.io.slides import IMAGE_SUFFIXES, read_mask_image


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


def processed_mask(
    plan: RegionPlan, mask: np.ndarray, mask_grid: Grid, frame: Grid, indices: list[int]
) -> np.ndarray:
    """The tissue mask (in `mask_grid`) where processed regions cover it: mask pixels whose
    centre lies in a processed region's core (in the `frame` grid; its area is the tissue the
    slide's figures are per). Every region the mask touches is processed by default, and then
    this is the whole mask."""
    h, w = mask.shape
    covered = np.zeros((h, w), bool)
    for index in indices:
        c0, r0, c1, r1 = frame.centres_to(plan.region(index).core, mask_grid)
        covered[max(0, r0) : max(0, r1), max(0, c0) : max(0, c1)] = True
    return mask & covered


def default_tissue(slide, name: str, config: SlideConfig):
    """(thumbnail, its mpp, tissue mask, the mask's mpp) as `config` asks."""
    return tissue_of(slide, name, config.tissue_source())
