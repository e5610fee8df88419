"""Post-processing speed: hovernet.postprocess against its previous implementation and against
MONAI's HoVer-Net post-processing.

Inputs are built like ../shared/reference/postproc_*: real 1000 x 1000 MoNuSeg instance maps
(about 300 nuclei each) turned into a nucleus probability map and HV targets, blurred, with
noise; a random type per nucleus gives a 5-class type softmax. A further case is the bundled
model's maps of a 2000 x 2000 region of the bundled demo slide (20x, post-processed at
0.5 um/px as slide mode does; the network runs once, ~10-20 s; `--slide-size 0` skips it).

Table 1: the current code against the previous one (kept below as the baseline: whole-map
passes, `binary_fill_holes`, the watershed on the whole map, records from whole-map
`np.bincount`s and `cv2.moments`), watershed and records timed apart, outputs compared in the
same run (instance maps and records must be identical); times are the fastest of the repeats,
baseline and current interleaved (the development machine is shared). Table 2: against MONAI,
as a user would call it (logits, channel first, Sobel kernel 21 as the original); times are
medians of repeats. All measured in the same run. Prints markdown tables.

    .venv/bin/python benchmarks/bench_postprocess.py [--repeats 3] [--slide-size 2000]
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
from scipy import ndimage
from skimage.segmentation import watershed

from hovernet import hv_targets
from hovernet.infer import postprocess as current
from hovernet.infer.postprocess import hv_watershed, instance_records, postprocess

REPO = Path(__file__).resolve().parents[1]
LABELS = REPO.parent / "shared" / "data" / "monuseg" / "labels"
SLIDE = REPO / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
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


# ------------------------------------------ baseline: the previous implementation
def _base_remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return labels


def _base_minmax(x: np.ndarray) -> np.ndarray:
    return cv2.normalize(x, None, alpha=0, beta=1, norm_type=cv2.NORM_MINMAX, dtype=cv2.CV_32F)


def baseline_hv_watershed(prob, h_map, v_map, params) -> np.ndarray:
    """The previous hv_watershed: every step on the whole map."""
    fg = ndimage.label(prob >= 0.5)[0]
    fg = (_base_remove_small(fg, params.min_object_size) > 0).astype(np.int32)
    sobel_h = cv2.Sobel(_base_minmax(h_map), cv2.CV_64F, 1, 0, ksize=params.sobel_ksize)
    sobel_v = cv2.Sobel(_base_minmax(v_map), cv2.CV_64F, 0, 1, ksize=params.sobel_ksize)
    overall = np.maximum(1 - _base_minmax(sobel_h), 1 - _base_minmax(sobel_v)) - (1 - fg)
    overall[overall < 0] = 0
    energy = -cv2.GaussianBlur((1.0 - overall) * fg, (3, 3), 0)
    markers = fg - (overall >= 0.4)
    markers[markers < 0] = 0
    markers = ndimage.binary_fill_holes(markers).astype(np.uint8)
    size = params.marker_open_ksize
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    markers = cv2.morphologyEx(markers, cv2.MORPH_OPEN, kernel)
    markers = _base_remove_small(ndimage.label(markers)[0], params.min_object_size)
    return watershed(energy, markers=markers, mask=fg).astype(np.int32)


def baseline_instance_records(inst_map, type_map, type_softmax) -> tuple[np.ndarray, dict]:
    """The previous instance_records: whole-map bincounts, cv2.moments per nucleus."""
    n_ids = int(inst_map.max())
    n_types = int(type_map.max()) + 1
    flat = inst_map.ravel().astype(np.int64) * n_types + type_map.ravel()
    votes = np.bincount(flat, minlength=(n_ids + 1) * n_types).reshape(n_ids + 1, n_types)
    areas = np.bincount(inst_map.ravel(), minlength=n_ids + 1).astype(np.float64)
    sums = np.stack(
        [
            np.bincount(inst_map.ravel(), weights=type_softmax[..., c].ravel(), minlength=n_ids + 1)
            for c in range(type_softmax.shape[-1])
        ],
        axis=1,
    )
    mean_probs = sums / np.maximum(areas, 1)[:, None]
    nuclei, new_ids = {}, np.zeros(n_ids + 1, dtype=np.int32)
    for old_id, sl in enumerate(ndimage.find_objects(inst_map), start=1):
        if sl is None:
            continue
        crop = (inst_map[sl] == old_id).astype(np.uint8)
        contours = cv2.findContours(crop, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        contour = np.squeeze(contours[0].astype(np.int32))
        if contour.ndim != 2 or contour.shape[0] < 3:
            continue
        rmin, cmin = sl[0].start, sl[1].start
        m = cv2.moments(crop)
        counts = votes[old_id]
        inst_type = int(np.argmax(counts[1:]) + 1) if counts[1:].any() else 0
        nuclei[len(nuclei) + 1] = {
            "bbox": [[rmin, cmin], [sl[0].stop, sl[1].stop]],
            "centroid": [m["m10"] / m["m00"] + cmin, m["m01"] / m["m00"] + rmin],
            "contour": (contour + np.array([cmin, rmin], dtype=np.int32)).tolist(),
            "type": inst_type,
            "type_prob": float(counts[inst_type] / (counts.sum() + 1.0e-6)),
            "type_probs": mean_probs[old_id].tolist(),
        }
        new_ids[old_id] = len(nuclei)
    return new_ids[inst_map], nuclei


def slide_inputs(size: int) -> dict:
    """The bundled model's maps of a size x size region in the middle of the demo slide."""
    from hovernet.infer.predict import predict_maps
    from hovernet.io.wsi import open_slide
    from hovernet.model.checkpoints import load_model
    from hovernet.model.inference import prepare_for_inference

    torch.set_num_threads(2)
    model = prepare_for_inference(load_model(None))
    slide = open_slide(SLIDE)
    width, height = slide.size_at(slide.mpp)
    size = min(size, width, height)
    image = slide.read_level(0, (width - size) // 2, (height - size) // 2, size, size)
    maps = predict_maps(model, np.ascontiguousarray(image[..., :3]))
    torch.set_num_threads(1)
    pred_map = maps.pred_map  # [type, probability, h, v]
    return {
        "prob": pred_map[..., 1],
        "hv": pred_map[..., 2:],
        "type_softmax": maps.type_softmax,
        "mpp": slide.mpp,
    }


def compare_with_baseline(x: dict, repeats: int) -> tuple:
    """Fastest seconds (watershed, records) of the baseline and the current code, same maps,
    interleaved; and whether their instance maps and records are identical."""
    params = current.PostprocessParams.for_mpp(x.get("mpp"))
    prob, h_map, v_map = x["prob"], x["hv"][..., 0], x["hv"][..., 1]
    type_map = np.argmax(x["type_softmax"], -1)
    times = {k: [] for k in ("base_ws", "base_rec", "ws", "rec")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        base_labels = baseline_hv_watershed(prob, h_map, v_map, params)
        t1 = time.perf_counter()
        base = baseline_instance_records(base_labels, type_map, x["type_softmax"])
        t2 = time.perf_counter()
        labels = hv_watershed(prob, h_map, v_map, params)
        t3 = time.perf_counter()
        ours = instance_records(labels, type_map, x["type_softmax"])
        t4 = time.perf_counter()
        for key, t in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[key].append(t)
    same = np.array_equal(base_labels, labels) and np.array_equal(base[0], ours[0])
    same = same and base[1] == ours[1]
    return {k: min(v) for k, v in times.items()}, len(ours[1]), same


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
    parser.add_argument("--slide-size", type=int, default=2000, help="0: no demo-slide case")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    inst_pp, type_pp = monai_transforms()

    inputs = [(name[:12], make_inputs(name, seed)) for seed, name in enumerate(CASES)]
    slide = None
    if args.slide_size:
        slide = (f"demo slide {args.slide_size}, 0.5 um/px", slide_inputs(args.slide_size))

    print("previous implementation (baseline) against the current one, same maps, same run:\n")
    print(
        "| maps | nuclei | before: watershed (s) | records | total | now: watershed (s) "
        "| records | total | speed-up | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    sums = [0.0, 0.0]
    for name, x in inputs + ([slide] if slide else []):
        t, n, same = compare_with_baseline(x, args.repeats)
        before, now = t["base_ws"] + t["base_rec"], t["ws"] + t["rec"]
        sums[0] += before
        sums[1] += now
        print(
            f"| {name} | {n} | {t['base_ws']:.3f} | {t['base_rec']:.3f} | {before:.3f} "
            f"| {t['ws']:.3f} | {t['rec']:.3f} | {now:.3f} | {before / now:.2f}x "
            f"| {'yes' if same else 'NO'} |"
        )
    print(f"\noverall: {sums[0] / sums[1]:.2f}x (sum of baseline times / sum of current)\n")

    rows = []
    for name, x in inputs:
        t_ours, ours = timed(lambda x=x: run_ours(x), args.repeats)
        splits = [run_ours_split(x) for _ in range(args.repeats)]
        ws = statistics.median(s[0] for s in splits)
        rec = statistics.median(s[1] for s in splits)
        with contextlib.redirect_stdout(io.StringIO()):  # MONAI prints per skipped contour
            t_monai, monai = timed(lambda x=x: run_monai(x, inst_pp, type_pp), args.repeats)
            m_ws = statistics.median(run_monai_watershed(x, inst_pp) for _ in range(args.repeats))
        rows.append((name, x["n_true"], ours["n"], monai["n"], t_ours, ws, rec, t_monai, m_ws))

    print("against MONAI:\n")
    print(
        "| image | true nuclei | ours: nuclei | MONAI: nuclei | ours total (s) | ours watershed "
        "| ours records | MONAI total (s) | MONAI watershed | MONAI records | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, n_true, n_ours, n_monai, t, ws, rec, tm, mws in rows:
        print(
            f"| {name} | {n_true} | {n_ours} | {n_monai} | {t:.3f} | {ws:.3f} | {rec:.3f} "
            f"| {tm:.3f} | {mws:.3f} | {tm - mws:.3f} | {tm / t:.1f}x |"
        )
    total = sum(r[7] for r in rows) / sum(r[4] for r in rows)
    print(f"\noverall speed-up (sum of MONAI times / sum of ours): {total:.1f}x")


if __name__ == "__main__":
    main()
