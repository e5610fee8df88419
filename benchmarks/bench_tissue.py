"""Tissue-mask speed: hovernet.infer.tissue.tissue_mask against its previous implementation.

The previous implementation is kept below as the baseline: cv2.medianBlur on one thread,
cv2.morphologyEx(MORPH_CLOSE) with the `_disk(radius)` kernel on the mask padded by radius + 1,
cv2.dilate by `_disk(margin)`. The current one filters the median in stripes on cv2's threads and
does the disk morphology in O(1) per pixel (cv2 box filters and a table look-up) above a small
radius. Both run in this process on real thumbnails (`Slide.thumbnail()`, at most 2048 px a side):
../shared/data/seed_format/slide_a.tif and slide_b.tif (0.4375 um/px, at full resolution; when
present) and the bundled demo slide, at the thumbnail's mpp and at any `--mpp` given. Each step
is timed on its own too, on the same input for both (the closing on the thresholded thumbnail,
the margin dilation on the closed mask). Times are the fastest of `--repeats`, baseline and
current interleaved (the development machine is shared); outputs are compared in the same run
(they must be identical). Prints a markdown table.

    .venv/bin/python benchmarks/bench_tissue.py [--repeats 5] [--mpp 1.0 --mpp 2.0]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hovernet.infer import tissue  # noqa: E402
from hovernet.infer.tissue import TissueParams, _disk, _otsu  # noqa: E402
from hovernet.io.wsi import open_slide  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEED = REPO.parent / "shared" / "data" / "seed_format"
THUMBNAILS = [
    SEED / "slide_a.tif",
    SEED / "slide_b.tif",
    REPO / "hovernet" / "samples" / "CMU-1-Small-Region.svs",
]


# the baseline: tissue_mask as it was


def old_close(mask: np.ndarray, radius: int) -> np.ndarray:
    pad = radius + 1
    padded = np.pad(mask, pad).astype(np.uint8)
    padded = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _disk(radius))
    return padded[pad:-pad, pad:-pad].astype(bool)


def old_dilate(mask: np.ndarray, margin: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk(margin)).astype(bool)


def old_tissue_mask(
    thumb_rgb: np.ndarray, params: TissueParams = TissueParams(), mpp: float | None = None
) -> np.ndarray:
    """tissue_mask with its previous steps: cv2 throughout."""
    steps = {"_median_blur": cv2.medianBlur, "_close_disk": old_close, "_dilate": old_dilate}
    saved = {name: getattr(tissue, name) for name in steps}
    try:
        for name, fn in steps.items():
            setattr(tissue, name, fn)
        return tissue.tissue_mask(thumb_rgb, params, mpp=mpp)
    finally:
        for name, fn in saved.items():
            setattr(tissue, name, fn)


def race(old, new, repeats: int) -> tuple[float, float, bool]:
    """Fastest of `repeats` runs of each, interleaved, and whether the outputs are identical."""
    t_old, t_new = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = old()
        t1 = time.perf_counter()
        b = new()
        t2 = time.perf_counter()
        t_old.append(t1 - t0)
        t_new.append(t2 - t1)
    return min(t_old), min(t_new), bool(np.array_equal(a, b))


def thresholded(thumb: np.ndarray, params: TissueParams, px: float) -> np.ndarray:
    """The mask tissue_mask closes (median, signal, Otsu), made the old way."""
    smooth = int(round(params.smooth_um / px)) | 1
    rgb = np.ascontiguousarray(thumb[:, :, :3])
    if smooth >= 3:
        rgb = cv2.medianBlur(rgb, min(smooth, 255))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    signal = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    t = min(max(_otsu(signal), params.min_threshold), params.max_threshold)
    return (signal > t) & (grey >= params.dark_limit)


def steps(thumb: np.ndarray, px: float, params: TissueParams) -> list:
    """(step, radius, old, new) for a thumbnail at `px` um/px; steps that do nothing left out."""
    radius = int(round(params.closing_um / px))
    margin = int(round(params.margin_um / px))
    smooth = min(int(round(params.smooth_um / px)) | 1, 255)
    rgb = np.ascontiguousarray(thumb[:, :, :3])
    mask = thresholded(thumb, params, px)
    closed = old_close(mask, radius) if radius >= 1 else mask
    out = [
        (
            "tissue_mask",
            f"{radius} / {margin}",
            lambda: old_tissue_mask(thumb, params, mpp=px),
            lambda: tissue.tissue_mask(thumb, params, mpp=px),
        )
    ]
    if smooth >= 3:
        out.append(
            (
                "median blur",
                f"size {smooth}",
                lambda: cv2.medianBlur(rgb, smooth),
                lambda: tissue._median_blur(rgb, smooth),
            )
        )
    if radius >= 1:
        out.append(
            (
                "closing",
                str(radius),
                lambda: old_close(mask, radius),
                lambda: tissue._close_disk(mask, radius),
            )
        )
    if margin >= 1:
        out.append(
            (
                "margin dilation",
                str(margin),
                lambda: old_dilate(closed, margin),
                lambda: tissue._dilate(closed, margin),
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mpp", type=float, action="append", default=[], help="extra thumbnail mpp")
    args = ap.parse_args()
    params = TissueParams()

    print(f"cv2 {cv2.__version__}, {cv2.getNumThreads()} cv2 threads, {os.cpu_count()} CPUs")
    print()
    print("| thumbnail | mpp | step | radius | old s | new s | ratio | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for path in THUMBNAILS:
        if not path.exists():
            print(f"| {path.name} | - | missing | - | - | - | - | - |")
            continue
        with open_slide(path) as slide:
            thumb, thumb_mpp = slide.thumbnail()
        h, w = thumb.shape[:2]
        for px in [thumb_mpp, *args.mpp]:
            for step, radius, old, new in steps(thumb, px, params):
                t_old, t_new, same = race(old, new, args.repeats)
                print(
                    f"| {path.name} ({w} x {h}) | {px:.4g} | {step} | {radius} | {t_old:.3f} | "
                    f"{t_new:.3f} | {t_old / t_new:.1f}x | {'yes' if same else 'NO'} |"
                )


if __name__ == "__main__":
    main()
