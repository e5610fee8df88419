"""Per-nucleus measurements: hovernet.infer.measure.nucleus_measurements against the
scikit-image regionprops code it replaced (kept below as the baseline), on real label maps.

Cases: MoNuSeg annotations (1000 x 1000, 40x), CoNSeP annotation crops (256 x 256, 40x), and
the instance map the bundled model and post-processing make of a 2000 x 2000 region of the
bundled demo slide (20x; the network runs once, ~10-20 s on 2 cores; `--slide-size 0` skips
it). Both implementations measure the same maps in the same run (area, perimeter,
eccentricity, solidity and outlines, as the writers ask for them), interleaved; times are the
fastest of `--repeats` runs (the development machine is shared: the fastest run is the one
least disturbed). The outputs are compared in the same run: area, perimeter, solidity and
outlines must be identical, eccentricity within 1e-9. Prints a markdown table.

    .venv/bin/python benchmarks/bench_measure.py [--repeats 3] [--monuseg 6] [--consep 48]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
from skimage.measure import regionprops

from hovernet.infer.measure import nucleus_measurements
from hovernet.nuclei import MEASUREMENTS

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HOVERNET_SHARED", REPO.parent / "shared"))


# ---------------------------------------------- baseline: regionprops, object by object
def _baseline_outline(mask: np.ndarray, offset: tuple[int, int]) -> list:
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    big = np.pad(np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1), 1)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rings = []
    for contour in contours:
        corners = (contour.reshape(-1, 2) - 1 + 1) // 2
        keep = np.any(corners != np.roll(corners, 1, axis=0), axis=1)
        ring = corners[keep] if keep.any() else corners[:1]
        if len(ring) >= 3:
            prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
            d1, d2 = ring - prev, nxt - ring
            cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
            ring = ring[~((cross == 0) & ((d1 * d2).sum(axis=1) > 0))]
        if len(ring) < 3:
            continue
        xs, ys = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
        if np.dot(xs, np.roll(ys, -1)) - np.dot(np.roll(xs, -1), ys) < 0:
            ring = ring[::-1]
        rings.append([(int(x) + offset[0], int(y) + offset[1]) for x, y in ring])
    return rings


def baseline_measurements(inst_map, nuclei, offset=(0, 0)) -> dict:
    """The previous implementation: skimage regionprops properties per nucleus."""
    wanted = {int(i) for i in nuclei}
    out = {}
    for region in regionprops(np.asarray(inst_map)):
        if region.label in wanted:
            r0, c0 = region.bbox[:2]
            out[region.label] = {
                "area": float(region.area),
                "perimeter": float(region.perimeter),
                "eccentricity": float(region.eccentricity),
                "solidity": float(region.solidity),
                "outline": _baseline_outline(region.image, (c0 + offset[0], r0 + offset[1])),
            }
    empty = {**dict.fromkeys(MEASUREMENTS, float("nan")), "outline": []}
    return {i: out.get(i, dict(empty)) for i in sorted(wanted)}


# ---------------------------------------------------------------------------- cases
def label_maps(folder: str, count: int) -> list[np.ndarray]:
    paths = sorted((SHARED / "data" / folder / "labels").glob("*_inst.tif"))
    step = max(1, len(paths) // count)
    return [tifffile.imread(p).astype(np.int32) for p in paths[::step][:count]]


def slide_map(size: int) -> np.ndarray:
    """The post-processed instance map of a size x size region of the demo slide (the maps
    bench_postprocess.py times post-processing on)."""
    from bench_postprocess import slide_inputs

    from hovernet.infer.postprocess import postprocess

    x = slide_inputs(size)
    pred_map = np.concatenate([x["prob"][..., None], x["hv"]], axis=-1)  # [probability, h, v]
    softmax = x["type_softmax"]
    inst_map, _ = postprocess(pred_map, softmax.shape[-1], softmax, mpp=x["mpp"])
    return inst_map


def run(maps: list[np.ndarray], fn) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    out = [fn(m, np.unique(m)[1:]) for m in maps]
    return time.perf_counter() - t0, out


def compare(old: list[dict], new: list[dict]) -> tuple[bool, float]:
    """(area, perimeter, solidity and outlines identical, largest eccentricity difference)."""
    same, worst = True, 0.0
    for a, b in zip(old, new, strict=True):
        same &= list(a) == list(b)
        for i, ref in a.items():
            got = b[i]
            same &= all(got[k] == ref[k] for k in ("area", "perimeter", "solidity", "outline"))
            worst = max(worst, abs(got["eccentricity"] - ref["eccentricity"]))
    return same, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--monuseg", type=int, default=6, help="MoNuSeg label maps")
    parser.add_argument("--consep", type=int, default=48, help="CoNSeP label crops")
    parser.add_argument("--slide-size", type=int, default=2000, help="0: no demo-slide case")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    cases = [
        (f"MoNuSeg labels 1000 x 1000 (x{args.monuseg})", label_maps("monuseg", args.monuseg)),
        (f"CoNSeP labels 256 x 256 (x{args.consep})", label_maps("consep_patches", args.consep)),
    ]
    if args.slide_size:
        name = f"demo slide {args.slide_size} x {args.slide_size}, bundled model"
        cases.append((name, [slide_map(args.slide_size)]))

    print(
        "| case | nuclei | regionprops (s) | vectorised (s) | speed-up | identical | max diff ecc |"
    )
    print("|---|---:|---:|---:|---:|---|---:|")
    total_old = total_new = 0.0
    for name, maps in cases:
        old_times, new_times = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            t, old = run(maps, baseline_measurements)
            old_times.append(t)
            t, new = run(maps, nucleus_measurements)
            new_times.append(t)
        t_old, t_new = min(old_times), min(new_times)
        total_old, total_new = total_old + t_old, total_new + t_new
        same, worst = compare(old, new)
        n = sum(len(m) for m in new)
        print(
            f"| {name} | {n} | {t_old:.3f} | {t_new:.3f} | {t_old / t_new:.1f}x "
            f"| {'yes' if same else 'NO'} | {worst:.1e} |"
        )
    print(f"\noverall: {total_old / total_new:.1f}x (sum of regionprops times / sum of ours)")


if __name__ == "__main__":
    main()
