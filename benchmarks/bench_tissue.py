"""Tissue-mask speed: hovernet.infer.tissue.tissue_mask of this checkout against a baseline commit.

The baseline (default 7fb6618^, before the speed-up: cv2.medianBlur on one thread, the closing
and margin by cv2 morphology with a `_disk` kernel) is extracted with `git archive` and both run
the same timing code in a fresh process each (benchmarks/baseline.py), with the same
TissueParams (this checkout's defaults), on real thumbnails (`Slide.thumbnail()`, at most 2048 px
a side): ../shared/data/seed_format/slide_a.tif and slide_b.tif (when present) and the bundled
demo slide, at the thumbnail's mpp and at any `--mpp` given. The steps (`_median_blur`,
`_close_disk`, `_dilate`) are timed on their own too where both sides have them ("-" where a side
lacks one; the default baseline has none of them). Times are the fastest of `--repeats` runs in
a process, over `--rounds` processes per side, baseline and current alternating (the
development machine is shared). The masks are compared (they must be identical). Prints a
markdown table.

    .venv/bin/python benchmarks/bench_tissue.py [--baseline 7fb6618^] [--repeats 5] [--rounds 2]
        [--mpp 1.0 --mpp 2.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from baseline import ROOT, imported_from, race, ratio_table, sides

SEED = ROOT.parent / "shared" / "data" / "seed_format"
THUMBNAILS = [
    SEED / "slide_a.tif",
    SEED / "slide_b.tif",
    ROOT / "hovernet" / "samples" / "CMU-1-Small-Region.svs",
]


def fastest(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def thresholded(tissue, thumb: np.ndarray, params, px: float) -> np.ndarray:
    """The mask tissue_mask closes (median, signal, Otsu), made with cv2."""
    import cv2

    smooth = int(round(params.smooth_um / px)) | 1
    rgb = np.ascontiguousarray(thumb[:, :, :3])
    if smooth >= 3:
        rgb = cv2.medianBlur(rgb, min(smooth, 255))
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    signal = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    t = min(max(tissue._otsu(signal), params.min_threshold), params.max_threshold)
    return (signal > t) & (grey >= params.dark_limit)


def steps(tissue, thumb: np.ndarray, px: float, params) -> dict[str, tuple[str, object]]:
    """{step: (radius, function)} for a thumbnail at `px` um/px: tissue_mask, and the steps this
    side's tissue module has (those that do something at this size)."""
    radius = int(round(params.closing_um / px))
    margin = int(round(params.margin_um / px))
    smooth = min(int(round(params.smooth_um / px)) | 1, 255)
    rgb = np.ascontiguousarray(thumb[:, :, :3])
    out = {"tissue_mask": (f"{radius} / {margin}", lambda: tissue.tissue_mask(thumb, params, px))}
    if smooth >= 3 and hasattr(tissue, "_median_blur"):
        out["median blur"] = (f"size {smooth}", lambda: tissue._median_blur(rgb, smooth))
    if hasattr(tissue, "_close_disk") and hasattr(tissue, "_dilate"):
        mask = thresholded(tissue, thumb, params, px)
        closed = tissue._close_disk(mask, radius) if radius >= 1 else mask
        if radius >= 1:
            out["closing"] = (str(radius), lambda: tissue._close_disk(mask, radius))
        if margin >= 1:
            out["margin dilation"] = (str(margin), lambda: tissue._dilate(closed, margin))
    return out


def side(out: Path, repeats: int, mpps: list[float], params_json: str) -> None:
    """Time this process's `hovernet` (the checkout or the baseline); masks and times into out."""
    from hovernet.infer import tissue
    from hovernet.io.wsi import open_slide

    names = {f.name for f in dataclasses.fields(tissue.TissueParams)}
    params = tissue.TissueParams(**{k: v for k, v in json.loads(params_json).items() if k in names})
    times, labels = {}, {}
    for path in THUMBNAILS:
        if not path.exists():
            continue
        with open_slide(path) as slide:
            thumb, thumb_mpp = slide.thumbnail()
        h, w = thumb.shape[:2]
        for px in [thumb_mpp, *mpps]:
            for step, (radius, fn) in steps(tissue, thumb, px, params).items():
                row = f"{path.name} ({w} x {h}) | {px:.4g} | {step} | {radius}"
                times[row], mask = fastest(fn, repeats)
                labels[row] = f"{len(labels)}.npy"
                np.save(out / labels[row], mask)
    (out / "labels.json").write_text(json.dumps({"labels": labels, "code": imported_from()}))
    (out / "times.json").write_text(json.dumps(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="7fb6618^")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mpp", type=float, action="append", default=[], help="extra thumbnail mpp")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_tissue")
    ap.add_argument("--side", type=Path, help=argparse.SUPPRESS)  # a timing process's out folder
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        return side(args.side, args.repeats, args.mpp, args.params)

    import cv2

    from hovernet.infer.tissue import TissueParams

    params = json.dumps(dataclasses.asdict(TissueParams()))
    argv = ["--repeats", str(args.repeats), "--params", params]
    argv += [a for mpp in args.mpp for a in ("--mpp", str(mpp))]
    best, outs = race(Path(__file__), argv, sides(args.baseline, args.work), args.work, args.rounds)
    found = {s: json.loads((d / "labels.json").read_text()) for s, d in outs.items()}
    code = {s: found[s]["code"] for s in found}
    print(f"cv2 {cv2.__version__}, {cv2.getNumThreads()} cv2 threads, {os.cpu_count()} CPUs; "
          f"baseline {args.baseline} ({code['baseline']}) against {code['current']}")  # fmt: skip
    print()
    table = ratio_table(best, list(best["current"]))
    print("| thumbnail | mpp | step | radius " + table[0][len("| step ") :] + " identical |")
    print("|---|---|---|---" + table[1][len("|---") :] + "---|")
    for row, line in zip(best["current"], table[2:], strict=True):
        a, b = (found[s]["labels"].get(row) for s in ("baseline", "current"))
        same = "-" if a is None else "yes" if np.array_equal(
            np.load(outs["baseline"] / a), np.load(outs["current"] / b)) else "NO"  # fmt: skip
        print("| " + row + line[len("| " + row) :] + f" {same} |")


if __name__ == "__main__":
    main()
