"""Speed of the instance metrics on a 1000 x 1000 MoNuSeg map (~300 nuclei).

Compares, in one process on the same image pair:
- hovernet.metrics.instance_stats (one contingency table -> Dice, AJI, AJI+, DQ, SQ, PQ),
- a straightforward per-instance implementation of the same definitions (one full-image mask
  per nucleus and per overlapping pair, each metric on its own, like the original's
  stats_utils.py),
- the PyPI package cellseg-metrics (Dice + AJI + PQ, the subset it offers), if installed.

Run: .venv/bin/python benchmarks/bench_metrics.py [--image NAME] [--repeats N]
Prints a markdown table; ratios are against hovernet.metrics measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import expand_labels

from hovernet.metrics import instance_stats

SHARED = Path(os.environ.get("HOVERNET_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DEFAULT_IMAGE = "TCGA-HC-7209-01A-01-TS1"  # MoNuSeg test image with 325 nuclei


def perturbed(true: np.ndarray, seed: int = 0) -> np.ndarray:
    """A plausible prediction: dilated by 1 px, 10% of nuclei dropped, 10% split in two."""
    rng = np.random.default_rng(seed)
    pred = expand_labels(true, distance=1).astype(np.int32)
    ids = np.unique(true)[1:]
    pred[np.isin(pred, rng.choice(ids, len(ids) // 10, replace=False))] = 0
    cols = np.indices(true.shape)[1]
    for k, i in enumerate(rng.choice(ids, len(ids) // 10, replace=False)):
        mask = pred == i
        if mask.any():
            pred[mask & (cols > np.median(cols[mask]))] = true.max() + 1 + k
    return pred


# ------------------------------------------------ per-instance baseline (same definitions)
def _masks(labels):
    ids = [i for i in np.unique(labels) if i]
    return ids, {i: (labels == i).astype(np.uint8) for i in ids}


def _pairwise(true, pred):
    t_ids, t_masks = _masks(true)
    p_ids, p_masks = _masks(pred)
    p_pos = {p: k for k, p in enumerate(p_ids)}
    inter = np.zeros((len(t_ids), len(p_ids)))
    union = np.zeros_like(inter)
    for r, t in enumerate(t_ids):
        for p in np.unique(pred[t_masks[t] > 0]):
            if p:
                total = (t_masks[t] + p_masks[p]).sum()
                both = (t_masks[t] * p_masks[p]).sum()
                inter[r, p_pos[p]], union[r, p_pos[p]] = both, total - both
    areas = [np.array([m.sum() for m in masks.values()]) for masks in (t_masks, p_masks)]
    return inter, union, areas


def _aji_from(inter, union, areas, rows, cols):
    i, u = inter[rows, cols].sum(), union[rows, cols].sum()
    u += areas[0][np.setdiff1d(np.arange(inter.shape[0]), rows)].sum()
    return i / (u + areas[1][np.setdiff1d(np.arange(inter.shape[1]), cols)].sum())


def baseline_aji(true, pred):
    inter, union, areas = _pairwise(true, pred)
    iou = inter / (union + 1e-6)
    rows = np.flatnonzero(iou.max(axis=1) > 0)
    return _aji_from(inter, union, areas, rows, iou.argmax(axis=1)[rows])


def baseline_aji_plus(true, pred):
    inter, union, areas = _pairwise(true, pred)
    iou = inter / (union + 1e-6)
    rows, cols = linear_sum_assignment(-iou)
    keep = iou[rows, cols] > 0
    return _aji_from(inter, union, areas, rows[keep], cols[keep])


def baseline_pq(true, pred):
    inter, union, _ = _pairwise(true, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    tp = int((iou > 0.5).sum())
    dq = tp / (tp + 0.5 * (iou.shape[1] - tp) + 0.5 * (iou.shape[0] - tp))
    sq = iou[iou > 0.5].sum() / (tp + 1e-6)
    return dq, sq, dq * sq


def baseline_all(true, pred):
    t, p = true > 0, pred > 0
    d = 2 * (t & p).sum() / (t.sum() + p.sum())
    return d, baseline_aji(true, pred), baseline_aji_plus(true, pred), *baseline_pq(true, pred)


def cellseg_all(true, pred):
    import cellseg_metrics as cm

    tp, fp, fn = cm.get_stats((true > 0).astype(np.uint8), (pred > 0).astype(np.uint8))
    pq = cm.panoptic_quality(true, pred)
    return cm.dice_coef(tp, fp, fn), cm.aggregated_jaccard_index(true, pred), pq["pq"]


def ours_all(true, pred):
    s = instance_stats(true, pred)
    return s.dice, s.aji, s.aji_plus, s.dq, s.sq, s.pq


def timed(fn, true, pred, repeats):
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn(true, pred)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--repeats", type=int, default=2, help="runs of the slow methods")
    args = parser.parse_args()
    true = tifffile.imread(SHARED / "data/monuseg/labels" / f"{args.image}_inst.tif")
    true = true.astype(np.int32)
    pred = perturbed(true)
    n_true, n_pred = len(np.unique(true)) - 1, len(np.unique(pred)) - 1

    t_ours, v_ours = timed(ours_all, true, pred, 10 * args.repeats)
    t_base, v_base = timed(baseline_all, true, pred, args.repeats)
    assert np.allclose(v_ours, v_base, atol=1e-9), (v_ours, v_base)
    rows = [
        ("hovernet.metrics (Dice, AJI, AJI+, DQ, SQ, PQ)", t_ours),
        ("per-instance baseline, same 6 metrics", t_base),
    ]
    try:
        t_cs, v_cs = timed(cellseg_all, true, pred, args.repeats)
        assert abs(v_cs[2] - v_ours[5]) < 1e-6  # same PQ
        rows.append(("cellseg-metrics 0.2 (Dice, AJI, PQ only)", t_cs))
    except ImportError:
        rows.append(("cellseg-metrics (not installed)", float("nan")))

    print(
        f"\n{args.image}: {true.shape[0]} x {true.shape[1]}, {n_true} true / {n_pred} "
        f"predicted nuclei; median of {10 * args.repeats} / {args.repeats} runs\n"
    )
    print("| method | seconds per image pair | time / hovernet.metrics |")
    print("|---|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.4f} | {t / t_ours:.1f}x |")


if __name__ == "__main__":
    main()
