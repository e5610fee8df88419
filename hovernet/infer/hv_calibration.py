"""The HV gradient ranges of a slide: the extremes the original's watershed normalises the HV
maps by, measured once per slide on a few tissue-rich windows (runs the network), so that every
region is normalised alike and the nuclei do not depend on the region size.
"""

from __future__ import annotations

import numpy as np

from hovernet.grids import Grid
from hovernet.infer.postprocess import PostprocessParams, hv_ranges
from hovernet.infer.predict import predict_phases_many
from hovernet.infer.slide_plan import SlidePlan
from hovernet.infer.slide_setup import SlideConfig

CALIBRATION_SIZE = 512  # side of a calibration window, processing pixels
CALIBRATION_WINDOWS = 4  # the most tissue-rich windows of a fixed grid over the slide


def calibration_windows(
    mask: np.ndarray, mask_grid: Grid, proc: Grid, width: int, height: int
) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) boxes of the processing grid `proc` (`width` x `height`): the
    CALIBRATION_WINDOWS cells of a fixed CALIBRATION_SIZE grid (from the slide's origin,
    whatever the region size) with the most tissue (`mask`, in `mask_grid`: the mask pixels
    each cell touches)."""
    size = CALIBRATION_SIZE
    scored = []
    for y0 in range(0, height, size):
        for x0 in range(0, width, size):
            x1, y1 = min(width, x0 + size), min(height, y0 + size)
            c0, r0, c1, r1 = proc.box_to((x0, y0, x1, y1), mask_grid)
            cell = mask[r0:r1, c0:c1]
            tissue = float(cell.mean()) if cell.size else 0.0
            if tissue > 0:
                scored.append((-tissue * (x1 - x0) * (y1 - y0), y0, x0, (x0, y0, x1, y1)))
    return [box for *_, box in sorted(scored)[:CALIBRATION_WINDOWS]]


def calibrate_hv_ranges(model, slide, plan: SlidePlan, config: SlideConfig) -> list[float]:
    """The extremes the original's watershed normalises the HV maps and their gradients by
    (`hovernet.infer.postprocess.hv_ranges`), over a few tissue-rich windows of `plan`'s mask
    and on the maps the regions get (the processing resolution; with phases read twice as fine,
    run at the phases and merged): measured once per slide, so that every region is normalised
    alike and the nuclei do not depend on the region size (a weakly trained model's extremes
    vary from region to region; the original measures them over each image it is given)."""
    frame = plan.frame
    width, height = slide.size_at(frame.proc_mpp)
    boxes = calibration_windows(plan.mask, plan.mask_grid, Grid(frame.proc_mpp), width, height)
    if not boxes:
        return []  # no tissue: no region is run
    ksize = PostprocessParams.for_mpp(frame.proc_mpp).sobel_ksize
    k = frame.k
    images = [
        slide.read(k * x0, k * y0, k * (x1 - x0), k * (y1 - y0), frame.mpp)
        for x0, y0, x1, y1 in boxes
    ]
    merged = predict_phases_many(model, images, frame.phases, config.batch_size, config.precision)
    maps = [(pred.pred_map[..., -2], pred.pred_map[..., -1]) for pred, _ in merged]
    border = min(ksize, min(h.shape[0] for h, _ in maps) // 4)  # the Sobel's reach into the mirror
    return list(hv_ranges(maps, ksize, border))
