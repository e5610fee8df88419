"""Post-processing speed: hovernet.postprocess against MONAI's HoVer-Net post-processing.

Inputs are built like ../shared/reference/postproc_*: real 1000 x 1000 MoNuSeg instance maps
(about 300 nuclei each) turned into a nucleus probability map and HV targets, blurred, with
noise; a random type per nucleus gives a 5-class type softmax. Both implementations get the
same maps, MONAI as a user would call it (logits, channel first, Sobel kernel 21 as the
original) and times are measured in the same run (median of repeats). Prints a markdown table.

    .venv/bin/python benchmarks/bench_postprocess.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch

from hovernet import hv_targets
from hovernet.infer.postprocess import hv_watershed, instance_records, postprocess

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "labels"
CASES = ["TCGA-CH-5767-01Z-00-DX1", "TCGA-A7-A13E-01Z-00-DX1", "TCGA-E2-A1B5-01Z-00-DX1"]
N_CLASSES = 5


def make_inputs(name: str, seed: int) -> dict[str, np.ndarray]:
    """Network-like outputs for a real instance map: probabilities, HV maps and type logits."""
    rng = np.random.default_rng(seed)
    inst = tifffile.imread(LABELS / f"{name}_inst.tif").astype(np.int32)
    hv, np_map = hv_targets(inst, inst.shape)
    prob = cv2.GaussianBlur(np_map.astype(np.float32), (0, 0), 1.5)
    prob = np.clip(prob + rng.normal(0, 0.1, prob.shape), 0, 1).astype(np.float32)
    hv = cv2.GaussianBlur(hv, (0, 0), 1.0) + rng.normal(0, 0.05, hv.shape).astype(np.float32)
    inst_type = rng.integers(1, N_CLASSES, inst.max() + 1)
    inst_type[0] = 0
    logits = 3.0 * np.eye(N_CLASSES, dtype=np.float32)[inst_type[inst]]
    logits += rng.normal(0, 1.0, logits.shape).astype(np.float32)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    eps = 1e-6
    return {
        "n_true": int(inst.max()),
        "prob": prob,
        "hv": hv.astype(np.float32),
        "type_logits": logits,
        "type_softmax": softmax.astype(np.float32),
        # NP logits whose 2-class softmax is `prob`
        "np_logits": np.stack([np.log(1 - prob + eps), np.log(prob + eps)]).astype(np.float32),
    }


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_ours(x: dict) -> dict:
    pred_map = np.dstack([np.argmax(x["type_softmax"], -1).astype(np.float32), x["prob"], x["hv"]])
    inst_map, nuclei = postprocess(pred_map, nr_types=N_CLASSES, type_softmax=x["type_softmax"])
    return {"n": len(nuclei)}


def run_ours_split(x: dict) -> tuple[float, float]:
    """(watershed, records) seconds for one call."""
    t0 = time.perf_counter()
    labels = hv_watershed(x["prob"], x["hv"][..., 0], x["hv"][..., 1])
    t1 = time.perf_counter()
    instance_records(labels, np.argmax(x["type_softmax"], -1), x["type_softmax"])
    return t1 - t0, time.perf_counter() - t1


def monai_transforms():
    from monai.apps.pathology.transforms.post.array import (
        HoVerNetInstanceMapPostProcessing,
        HoVerNetNuclearTypePostProcessing,
    )

    inst_pp = HoVerNetInstanceMapPostProcessing(sobel_kernel_size=21, marker_radius=2)
    type_pp = HoVerNetNuclearTypePostProcessing(return_type_map=False)
    return inst_pp, type_pp


def run_monai(x: dict, inst_pp, type_pp) -> dict:
    np_logits = torch.from_numpy(x["np_logits"])
    hv = torch.from_numpy(np.ascontiguousarray(x["hv"].transpose(2, 0, 1)))
    tp = torch.from_numpy(np.ascontiguousarray(x["type_logits"].transpose(2, 0, 1)))
    info, inst_map = inst_pp(np_logits, hv)
    info, _ = type_pp(tp, info, inst_map)
    return {"n": len(info)}


def run_monai_watershed(x: dict, inst_pp) -> float:
    """Seconds of MONAI's map stages (mask, border, distance, markers, watershed) alone."""
    t0 = time.perf_counter()
    mask = inst_pp.generate_watershed_mask(torch.from_numpy(x["np_logits"]))
    hv = torch.from_numpy(np.ascontiguousarray(x["hv"].transpose(2, 0, 1)))
    border = inst_pp.generate_instance_border(mask, hv)
    dist = inst_pp.generate_distance_map(mask, border)
    markers = inst_pp.generate_watershed_markers(mask, border)
    inst_pp.watershed(dist, mask, markers)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    inst_pp, type_pp = monai_transforms()

    rows = []
    for seed, name in enumerate(CASES):
        x = make_inputs(name, seed)
        t_ours, ours = timed(lambda x=x: run_ours(x), args.repeats)
        splits = [run_ours_split(x) for _ in range(args.repeats)]
        ws = statistics.median(s[0] for s in splits)
        rec = statistics.median(s[1] for s in splits)
        with contextlib.redirect_stdout(io.StringIO()):  # MONAI prints per skipped contour
            t_monai, monai = timed(lambda x=x: run_monai(x, inst_pp, type_pp), args.repeats)
            m_ws = statistics.median(run_monai_watershed(x, inst_pp) for _ in range(args.repeats))
        rows.append((name, x["n_true"], ours["n"], monai["n"], t_ours, ws, rec, t_monai, m_ws))

    print(
        "| image | true nuclei | ours: nuclei | MONAI: nuclei | ours total (s) | ours watershed "
        "| ours records | MONAI total (s) | MONAI watershed | MONAI records | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n_true, n_ours, n_monai, t, ws, rec, tm, mws in rows:
        print(
            f"| {name[:12]} | {n_true} | {n_ours} | {n_monai} | {t:.3f} | {ws:.3f} | {rec:.3f} "
            f"| {tm:.3f} | {mws:.3f} | {tm - mws:.3f} | {tm / t:.1f}x |"
        )
    total = sum(r[7] for r in rows) / sum(r[4] for r in rows)
    print(f"\noverall speed-up (sum of MONAI times / sum of ours): {total:.1f}x")


if __name__ == "__main__":
    main()
