"""A slide's resolution estimated from its nuclei, and plausibility checks of a slide's result.

`estimate_mpp` answers "how many microns is one level-0 pixel of this slide?" for slides that do
not say (or say wrongly), from the pixels alone:

1. `tissue_windows` picks a few tissue-rich places on a thumbnail (most haematoxylin, away from
   each other and from the edges).
2. For each candidate pixel size c (0.125 to 2 um/px in steps of sqrt 2), a window of
   `window` x `window` network pixels is read around each place *as if* level 0 were c um/px,
   resampled to the model's resolution, and run through the model and the HV post-processing.
3. If c is right, the nuclei come out at their true size. If the slide is really finer than c
   (more pixels per micron), nuclei look smaller than they are, and larger if it is coarser:
   the median nucleus area, in um^2 under the assumption c, grows about as c^2 while the model
   still sees nuclei as nuclei. The chosen c is the one whose median area is closest to what
   the model gives at the true resolution of its own training data (`REFERENCE_AREA_UM2`),
   with penalties where the model is less at ease (lower mean nucleus probability, HV maps
   that fit the nuclei worse: nuclei far too large for it are cut into fragments, which can
   again have the reference's size); the estimate is then interpolated (log-log) between that
   candidate and the neighbour on the other side of the reference.

`estimate_slide_mpp(slide, model)` does it for an open `hovernet.io.wsi.Slide`.

Accuracy: nuclei differ in size between tissues, so this is an estimate from nucleus size, not
a measurement. Measured with the bundled model and the defaults (8 windows, 3-12 s on 2 shared
CPU cores): CMU-1-Small-Region (0.499 um/px) 0.501; slide_a and slide_b of ../shared/seed_format
(CoNSeP test images at 0.25) 0.283 and 0.296; the 14 MoNuSeg test tiles (0.25): median 0.225,
13 of 14 within 25 % (from 0.156 to 0.269; the outlier, TCGA-AO-A0J2, is a tile of large tumour
nuclei). Tissue of mostly large nuclei reads finer than it is, of mostly small ones coarser. It
tells 10x from 20x from 40x; do not take it for a calibration.

`plausibility_warnings` says when a slide's result cannot be right: no nuclei in a good deal of
tissue, or a density (or median nucleus area) far outside what the model's training data hold.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hovernet.data.targets import hv_targets
from hovernet.errors import HoverNetError
from hovernet.infer.maps import maps_to_nuclei
from hovernet.infer.predict import predict_stream
from hovernet.infer.resample import model_mpp

# candidate level-0 pixel sizes, um/px: 0.125 (80x) to 2 (5x) in steps of sqrt 2
CANDIDATES = tuple(round(0.125 * 2 ** (k / 2), 4) for k in range(9))

# The median nucleus area (um^2) the bundled model (lite-v2) finds at the true resolution of its
# training data: 27.4 um^2 on the 13 MoNuSeg training tiles (5,039 nuclei) and 16.6 um^2 on the
# 432 CoNSeP training crops (10,326 nuclei), both 0.25 um/px, run with input_mpp 0.25, nuclei
# touching the image border left out. The reference is their geometric mean, so that neither
# the large tumour nuclei of MoNuSeg nor the small inflammatory and spindle nuclei of CoNSeP set
# it alone. (The hand-drawn labels: MoNuSeg 26.3 um^2, CoNSeP 12.1 um^2; the model draws small
# nuclei larger than the labels do, so its own figures are the ones to compare with.)
# lite-v3, measured the same way: 27.4 um^2 (5,015 nuclei) and 16.7 um^2 (10,425), so the
# reference stands.
REFERENCE_AREA_UM2 = math.sqrt(27.4 * 16.6)  # 21.3
# Penalties (in units of |log(median area / reference)|) for a candidate where the model is less
# at ease than at the best one, per 0.01: of mean nucleus probability below the highest, and of
# HV error above the lowest (mean squared difference, over nucleus pixels, between the predicted
# HV maps and the HV maps of the nuclei it was cut into). Nuclei far larger than the model knows
# are cut into fragments of about the reference's size; their HV maps do not fit the fragments
# (CMU-1 at 4x its true pixel size: HV error 0.144 against 0.119 at the truth; MoNuSeg tiles
# 0.13-0.16 against 0.05-0.07), so the penalty keeps such a candidate from winning.
PROBABILITY_WEIGHT = 0.05
HV_WEIGHT = 0.1
# at an end of the candidates, an estimate up to this far (log area) from the reference is
# extrapolated (area ~ mpp^2: half a sqrt-2 step); further is an error
EDGE_LOG_AREA = math.log(2) / 2
MIN_NUCLEI = 10  # nuclei a candidate needs to be scored
WINDOW_PX = 224  # network pixels per window side (one output tile of `lite`)
N_WINDOWS = 8
THUMB_SIDE = 512  # thumbnail used to place the windows
WINDOW_SPACING_PX = 224  # level-0 pixels: windows are placed at least this far apart

# Nuclei per mm^2 of tissue in the training data (hand-drawn labels, 0.25 um/px): MoNuSeg
# 3,984 - 13,088 per 1000 x 1000 tile (median 6,928); CoNSeP crops of 256 x 256 (train and test)
# median 9,000 - 9,400, 95th percentile 26,000 - 29,000, the densest 46,143. Whole slides hold
# sparser tissue than these chosen tiles: the bundled slide CMU-1-Small-Region gives 3,478 per
# mm^2 of its tissue mask in slide mode. The bounds are far outside both: 1/40 of the sparsest
# MoNuSeg tile (1/35 of CMU-1), and above the densest CoNSeP crop (discs of 16 um^2 packed edge
# to edge make ~55,000 per mm^2).
DENSITY_LOW_PER_MM2 = 100.0
DENSITY_HIGH_PER_MM2 = 60_000.0
# median nucleus area (um^2) at the true resolution, bundled model, per image: 16 - 45 on the
# 27 MoNuSeg tiles, the two seed_format slides (CoNSeP) and CMU-1; below 8 (a 3.2 um disc) or
# above 150 (a 14 um disc) the resolution is almost surely wrong by 2x or more
AREA_LOW_UM2 = 8.0
AREA_HIGH_UM2 = 150.0
EMPTY_TISSUE_MM2 = 0.1  # no nuclei in more tissue than this is a warning

Reader = Callable[[int, int, int, int, float], np.ndarray]


@dataclass(frozen=True)
class CandidateScore:
    """One assumed pixel size and what the model found under it (score: lower is better;
    inf where fewer than MIN_NUCLEI nuclei were found)."""

    mpp: float
    score: float
    nuclei: int
    median_area_um2: float  # nan without nuclei
    mean_probability: float  # mean nucleus probability over the nuclei; nan without nuclei


@dataclass(frozen=True)
class MppEstimate:
    """The estimated level-0 pixel size and how it was found."""

    mpp: float  # um per level-0 pixel
    candidates: tuple[CandidateScore, ...]
    nuclei: int  # nuclei found at the best candidate
    windows: int  # tissue windows the model ran on
    reference_area_um2: float

    @property
    def best(self) -> CandidateScore:
        return min(self.candidates, key=lambda c: c.score)

    def describe(self) -> str:
        """One line for the log."""
        b = self.best
        lo, hi = self.candidates[0].mpp, self.candidates[-1].mpp
        return (
            f"estimated resolution {self.mpp:.3g} um/px from the size of {self.nuclei} nuclei "
            f"in {self.windows} tissue windows (median {b.median_area_um2:.1f} um^2 at "
            f"{b.mpp:g} um/px, model reference {self.reference_area_um2:.1f} um^2; tried "
            f"{lo:g}-{hi:g} um/px); an estimate from nucleus size, typically within 25 %"
        )


def tissue_windows(
    thumb: np.ndarray, n: int, spacing_px: float, margin_px: float = 0.0
) -> list[tuple[float, float]]:
    """Up to `n` (x, y) centres, in thumbnail pixels, of the places with the most haematoxylin
    in tissue (box mean over `spacing_px`), at least `spacing_px` apart and, where the
    thumbnail allows, `margin_px` from its edges. Tissue: saturation > 20, grey level 25-235
    (not glass, not pen or dark borders). Empty when the thumbnail shows no tissue."""
    import cv2
    from skimage.color import rgb2hed

    rgb = np.ascontiguousarray(thumb[..., :3], dtype=np.uint8)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    sat = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    tissue = (sat > 20) & (grey > 25) & (grey < 235)
    if not tissue.any():
        return []
    haem = np.clip(rgb2hed(rgb)[..., 0], 0, None)
    k = max(3, int(round(spacing_px)) | 1)
    score = cv2.blur(np.where(tissue, haem, 0).astype(np.float32), (k, k))
    score[~cv2.blur(tissue.astype(np.float32), (k, k)).astype(bool)] = -1
    height, width = score.shape
    m = int(round(margin_px))
    if 0 < m and 2 * m < height and 2 * m < width:
        score[:m], score[-m:], score[:, :m], score[:, -m:] = -1, -1, -1, -1
    out = []
    r = max(1, int(round(spacing_px)))
    for _ in range(n):
        y, x = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[y, x] <= 0:
            break
        out.append((x + 0.5, y + 0.5))
        score[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = -1
    return out


@dataclass
class Measured:
    """What the model found in the windows read under one assumed pixel size."""

    mpp: float
    areas_um2: list[float]  # per nucleus not touching a window border, under the assumption
    probabilities: list[float]  # mean nucleus probability of the same nuclei
    hv_sq_err: float = 0.0  # summed over nucleus pixels (see HV_WEIGHT)
    hv_pixels: int = 0

    @property
    def hv_error(self) -> float:
        return self.hv_sq_err / self.hv_pixels if self.hv_pixels else math.nan


def score_candidates(
    measured: Sequence[Measured],
    reference_area_um2: float = REFERENCE_AREA_UM2,
    min_nuclei: int = MIN_NUCLEI,
) -> tuple[float, tuple[CandidateScore, ...]]:
    """(estimated mpp, scores) from what was measured per candidate (see the module
    docstring); pure.

    A HoverNetError when no candidate has `min_nuclei` nuclei, or when the best one is at an
    end of the range with the nuclei still well too small (or too large) there: the slide's
    resolution then lies outside the candidates."""
    measured = sorted(measured, key=lambda m: m.mpp)
    ok = [len(m.areas_um2) >= min_nuclei for m in measured]
    if not any(ok):
        raise HoverNetError(
            f"fewer than {min_nuclei} nuclei at every candidate resolution "
            f"({measured[0].mpp:g}-{measured[-1].mpp:g} um/px)"
        )
    med = [float(np.median(m.areas_um2)) if m.areas_um2 else math.nan for m in measured]
    prob = [float(np.mean(m.probabilities)) if m.probabilities else math.nan for m in measured]
    best_prob = max(p for p, good in zip(prob, ok, strict=True) if good)
    best_hv = min(m.hv_error for m, good in zip(measured, ok, strict=True) if good)
    z = [
        math.log(a / reference_area_um2) if good else math.nan
        for a, good in zip(med, ok, strict=True)
    ]
    scores = []
    for k, m in enumerate(measured):
        score = math.inf
        if ok[k]:
            score = (
                abs(z[k])
                + PROBABILITY_WEIGHT * (best_prob - prob[k]) / 0.01
                + HV_WEIGHT * (m.hv_error - best_hv) / 0.01
            )
        scores.append(CandidateScore(m.mpp, score, len(m.areas_um2), med[k], prob[k]))
    i = min(range(len(scores)), key=lambda k: scores[k].score)
    log_c = [math.log(m.mpp) for m in measured]
    for j in (i - 1, i + 1):  # the neighbour on the other side of the reference
        if 0 <= j < len(measured) and ok[j] and z[i] * z[j] <= 0 and z[i] != z[j]:
            f = z[i] / (z[i] - z[j])
            return math.exp(log_c[i] + f * (log_c[j] - log_c[i])), tuple(scores)
    outward = (i == len(measured) - 1 and z[i] < 0) or (i == 0 and z[i] > 0)
    if outward and abs(z[i]) > EDGE_LOG_AREA:
        coarser = z[i] < 0
        raise HoverNetError(
            f"the nuclei look {'smaller' if coarser else 'larger'} than the model's reference "
            f"({reference_area_um2:.1f} um^2) even at {measured[i].mpp:g} um/px "
            f"({med[i]:.1f} um^2): the slide seems {'coarser' if coarser else 'finer'} than "
            f"every candidate ({measured[0].mpp:g}-{measured[-1].mpp:g} um/px)"
        )
    # no neighbour across the reference: area ~ mpp^2 near the best candidate
    return measured[i].mpp * math.exp(-z[i] / 2), tuple(scores)


def _measure_window(maps, nr_types: int | None, net_mpp: float, into: Measured) -> None:
    """Adds the nuclei of one window (network maps at `net_mpp`) to `into`: areas and mean
    probabilities of those not touching its border, and the HV error of all."""
    inst, nuclei = maps_to_nuclei(maps, nr_types, net_mpp, maps.pred_map.shape)
    prob = maps.prob
    counts = np.bincount(inst.ravel())
    sums = np.bincount(inst.ravel(), weights=prob.ravel().astype(np.float64))
    height, width = inst.shape
    for i, rec in nuclei.items():
        (r0, c0), (r1, c1) = rec["bbox"]
        if r0 <= 0 or c0 <= 0 or r1 >= height or c1 >= width or counts[i] == 0:
            continue
        into.areas_um2.append(float(counts[i]) * net_mpp**2)
        into.probabilities.append(float(sums[i] / counts[i]))
    fg = inst > 0
    if fg.any():
        target, _ = hv_targets(inst, (height, width), min_size=1)
        into.hv_sq_err += float(((maps.pred_map[..., -2:] - target)[fg] ** 2).sum())
        into.hv_pixels += int(fg.sum())


@dataclass(frozen=True)
class EstimateOptions:
    """How `estimate_mpp` searches: the candidate level-0 pixel sizes (um/px), how many tissue
    windows of how many network pixels a side, the network's batch and precision, and the name
    its errors give the slide."""

    candidates: Sequence[float] = CANDIDATES
    n_windows: int = N_WINDOWS
    window: int = WINDOW_PX
    batch_size: int = 8
    precision: str = "auto"
    name: str = "the slide"


def estimate_mpp(
    read: Reader,
    dimensions: tuple[int, int],
    model: torch.nn.Module,
    thumbnail: tuple[np.ndarray, float] | None = None,
    nominal_mpp: float = 1.0,
    options: EstimateOptions = EstimateOptions(),
) -> MppEstimate:
    """The level-0 pixel size (um/px) of a slide, estimated from its nuclei.

    `read(x, y, w, h, mpp)` returns RGB uint8 (h, w, 3) of the slide resampled to `mpp`, taking
    level 0 to be `nominal_mpp` um/px: the convention of `hovernet.io.wsi.Slide.read`, so pass
    `slide.read` and `nominal_mpp=slide.mpp` whatever mpp the slide was opened with (a
    placeholder such as `open_slide(path, mpp=1.0)` is fine). `dimensions`: level-0 (width,
    height). `thumbnail`: (RGB, its mpp in the same nominal units), e.g.
    `slide.thumbnail(512)`; None reads one through `read`. The model must record its
    resolution (`model.meta.mpp`); it runs through the backend attached to it.

    A HoverNetError naming `options.name` and `--slide_mpp` when there is no tissue, too few
    nuclei, or the answer lies outside `options.candidates`.
    """
    name = options.name
    net_mpp = model_mpp(model)
    if net_mpp is None:
        raise HoverNetError(
            f"{name}: the model does not record the resolution it was trained at, so the "
            "slide's cannot be estimated from nucleus size; give --slide_mpp"
        )
    if thumbnail is None:
        thumbnail = _read_thumbnail(read, dimensions, nominal_mpp)
    thumb, thumb_mpp = thumbnail
    thumb_down = thumb_mpp / nominal_mpp  # level-0 pixels per thumbnail pixel
    centres = tissue_windows(
        thumb, options.n_windows, WINDOW_SPACING_PX / thumb_down, WINDOW_SPACING_PX / 2 / thumb_down
    )
    if not centres:
        raise HoverNetError(
            f"{name}: no tissue on the thumbnail, so its resolution cannot be estimated from "
            "nuclei; give --slide_mpp"
        )
    level0 = [(tx * thumb_down, ty * thumb_down) for tx, ty in centres]
    measured = [Measured(float(c), [], []) for c in sorted(options.candidates)]
    items = _candidate_windows(read, nominal_mpp, net_mpp, measured, level0, options.window)
    for ci, _, maps in predict_stream(model, items, options.batch_size, options.precision):
        _measure_window(maps, model.nr_types, net_mpp, measured[ci])
    try:
        mpp, scores = score_candidates(measured)
    except HoverNetError as exc:
        raise HoverNetError(
            f"{name}: cannot estimate its resolution: {exc}; give --slide_mpp"
        ) from None
    best = min(scores, key=lambda s: s.score)
    return MppEstimate(mpp, scores, best.nuclei, len(centres), REFERENCE_AREA_UM2)


def _read_thumbnail(
    read: Reader, dimensions: tuple[int, int], nominal_mpp: float
) -> tuple[np.ndarray, float]:
    """(RGB, its mpp) of the whole slide at most `THUMB_SIDE` pixels a side, through `read`."""
    width, height = int(dimensions[0]), int(dimensions[1])
    down = max(1.0, max(width, height) / THUMB_SIDE)  # level-0 pixels per thumbnail pixel
    thumb_w, thumb_h = max(1, round(width / down)), max(1, round(height / down))
    return read(0, 0, thumb_w, thumb_h, nominal_mpp * down), nominal_mpp * down


def _candidate_windows(
    read: Reader,
    nominal_mpp: float,
    net_mpp: float,
    measured: list[Measured],
    level0: list[tuple[float, float]],
    window: int,
) -> list[tuple[int, np.ndarray]]:
    """(candidate index, window) for every candidate and place: `window` network pixels a side
    around each place (`level0`: its centre in level-0 pixels), read as if level 0 were the
    candidate's um/px."""
    items = []
    for ci, m in enumerate(measured):
        down = net_mpp / m.mpp  # level-0 pixels per network pixel if level 0 is m.mpp um/px
        for x, y in level0:
            cx, cy = x / down, y / down
            x0, y0 = int(round(cx - window / 2)), int(round(cy - window / 2))
            items.append((ci, read(x0, y0, window, window, nominal_mpp * down)))
    return items


def estimate_slide_mpp(slide, model: torch.nn.Module, **options) -> MppEstimate:
    """`estimate_mpp` for an open `hovernet.io.wsi.Slide` (opened with any placeholder mpp when
    the file records none: `open_slide(path, mpp=1.0)`); `options`: `EstimateOptions`' fields."""
    options.setdefault("name", str(getattr(slide, "path", "the slide")))
    return estimate_mpp(
        slide.read,
        slide.dimensions,
        model,
        thumbnail=slide.thumbnail(THUMB_SIDE),
        nominal_mpp=slide.mpp,
        options=EstimateOptions(**options),
    )


def plausibility_warnings(
    n_nuclei: int,
    tissue_mm2: float,
    *,
    median_area_um2: float | None = None,
    mpp: float | None = None,
    name: str = "the slide",
) -> list[str]:
    """Lines (without the `warning: ` prefix) saying why a slide's result looks wrong, or none.

    `n_nuclei` nuclei in `tissue_mm2` mm^2 of tissue (both at the slide's assumed resolution
    `mpp`, which the lines quote when given); `median_area_um2`, the median nucleus area, is
    checked too when given. Thresholds and their sources: the module's constants."""
    at = f" at {mpp:g} um/px" if mpp is not None else ""
    fix = (
        "check the slide's resolution (a wrong one is the usual cause: rerun with "
        "--slide_mpp auto, or give the right --slide_mpp)"
    )
    out = []
    if tissue_mm2 > EMPTY_TISSUE_MM2 and n_nuclei == 0:
        out.append(
            f"{name}: no nuclei in {tissue_mm2:.2f} mm^2 of tissue{at}: {fix}; otherwise the "
            "slide may not be H&E, or its tissue empty or out of focus"
        )
        return out
    if tissue_mm2 > EMPTY_TISSUE_MM2:
        density = n_nuclei / tissue_mm2
        if density < DENSITY_LOW_PER_MM2 or density > DENSITY_HIGH_PER_MM2:
            side = "below" if density < DENSITY_LOW_PER_MM2 else "above"
            out.append(
                f"{name}: {density:,.0f} nuclei per mm^2 of tissue{at} is far {side} what the "
                f"model was trained on ({DENSITY_LOW_PER_MM2:,.0f}-{DENSITY_HIGH_PER_MM2:,.0f} "
                f"is plausible): {fix}; otherwise the slide may not be H&E, or its tissue "
                "mostly empty or out of focus"
            )
    if median_area_um2 is not None and n_nuclei > 0:
        if not AREA_LOW_UM2 <= median_area_um2 <= AREA_HIGH_UM2:
            side = "small" if median_area_um2 < AREA_LOW_UM2 else "large"
            out.append(
                f"{name}: the median nucleus is {median_area_um2:.1f} um^2{at}, far too {side} "
                f"for a nucleus ({AREA_LOW_UM2:g}-{AREA_HIGH_UM2:g} um^2 is plausible): {fix}"
            )
    return out
