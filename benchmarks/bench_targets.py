"""Benchmark: vectorised HV targets against a per-instance loop (the original's approach).

Run: .venv/bin/python benchmarks/bench_targets.py [--repeats N]

The loop below scans the whole map once per instance (split into 4-connected pieces, bounding
box, centre of mass, offsets), which is how the original computes targets; it is also used by
tests/test_targets.py as an independent oracle on real label maps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hovernet.data.targets import crop_center, hv_targets  # noqa: E402

LABEL = REPO.parent / "shared/data/monuseg/labels/TCGA-CH-5767-01Z-00-DX1_inst.tif"


def loop_hv_targets(inst_map: np.ndarray, out_shape: tuple[int, int], min_size: int = 30):
    """Per-instance reference implementation with the original's top/left-edge behaviour."""
    ann = np.asarray(inst_map).astype(np.int64)
    # split ids made of several 4-connected pieces, one id at a time
    next_id = ann.max()
    for inst_id in np.unique(ann)[1:]:
        pieces, n = ndimage.label(ann == inst_id)
        for k in range(2, n + 1):
            next_id += 1
            ann[pieces == k] = next_id
    crop = crop_center(ann, out_shape).copy()
    sizes = np.bincount(crop.ravel())
    crop[sizes[crop] < min_size] = 0

    x_map = np.zeros(ann.shape, np.float32)
    y_map = np.zeros(ann.shape, np.float32)
    for inst_id in np.unique(crop)[1:]:
        mask = ann == inst_id
        rr = np.flatnonzero(mask.any(axis=1))
        cc = np.flatnonzero(mask.any(axis=0))
        r0, r1, c0, c1 = rr[0] - 2, rr[-1] + 3, cc[0] - 2, cc[-1] + 3
        if r0 < 0 or c0 < 0:  # the original's negative slice start: no target
            continue
        box = mask[r0:r1, c0:c1]
        com = ndimage.center_of_mass(box)
        ys, xs = np.nonzero(box)
        dx = (xs + 1 - int(com[1] + 0.5)).astype(np.float32)
        dy = (ys + 1 - int(com[0] + 0.5)).astype(np.float32)
        for d in (dx, dy):
            if d.min() < 0:
                d[d < 0] /= -d[d < 0].min()
            if d.max() > 0:
                d[d > 0] /= d[d > 0].max()
        x_map[ys + r0, xs + c0] = dx
        y_map[ys + r0, xs + c0] = dy
    hv = crop_center(np.dstack([x_map, y_map]), out_shape)
    np_map = (crop_center(ann, out_shape) > 0).astype(np.uint8)
    return hv, np_map


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import tifffile

    inst = tifffile.imread(LABEL).astype(np.int32)
    n = len(np.unique(inst)) - 1
    rows = []
    for out in (inst.shape[0], 980):
        shape = (out, out)
        ref_hv, ref_np = loop_hv_targets(inst, shape)
        hv, np_map = hv_targets(inst, shape, legacy_edge=True)
        assert np.array_equal(hv, ref_hv) and np.array_equal(np_map, ref_np), "outputs differ"
        t_loop = best_of(lambda s=shape: loop_hv_targets(inst, s), args.repeats)
        t_vec = best_of(lambda s=shape: hv_targets(inst, s), args.repeats * 3)
        rows.append((f"{inst.shape[0]}x{inst.shape[1]}, {n} nuclei -> {out}", t_loop, t_vec))
    print("| map -> output | per-instance loop (ms) | hv_targets (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    for name, t_loop, t_vec in rows:
        print(f"| {name} | {t_loop * 1e3:.1f} | {t_vec * 1e3:.1f} | {t_loop / t_vec:.1f}x |")
    print("\noutputs identical (legacy_edge=True vs loop): yes")


if __name__ == "__main__":
    main()
