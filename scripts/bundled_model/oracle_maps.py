"""What limits a model: its maps against the truth's, on the validation images (score.sh
SPLIT=valid: 3 MoNuSeg tiles, 80 CoNSeP crops, both 0.25 um/px).

   python scripts/bundled_model/oracle_maps.py SHARED_DATA [CHECKPOINT]

The network runs once at its resolution; then the same post-processing (the defaults) and
scoring (PQ at the images' own pixels, the causes of its errors as `hovernet stats --mode
errors`) run on:
- network: the model's maps, as `hovernet infer` uses them;
- true HV: the model's nucleus probability with the HV maps of the truth;
- true NP: the truth's nucleus mask with the model's HV maps;
- true NP + HV: both from the truth (what the post-processing makes of perfect maps);
- true NP + HV, 30 px: the same with the original's HV targets, which leave nuclei under 30 px
  (at the model's resolution) without a centre (`hovernet.data.targets.min_size_for_mpp`);
- truth at model px: the true instances shrunk to the model's pixels and enlarged back, no
  post-processing (what the resolution alone loses).
The truth's maps are made at the model's resolution from the truth shrunk by nearest
neighbour, with the training targets' code (hovernet.data.targets.hv_targets, for the model's
resolution).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tune_postprocess import validation_items

from hovernet.data.targets import MIN_SIZE, hv_targets, min_size_for_mpp
from hovernet.infer import resample
from hovernet.infer.phased import Phases
from hovernet.infer.postprocess import PostprocessParams, postprocess
from hovernet.infer.predict import predict_phases_many
from hovernet.io.labels import read_instance_map
from hovernet.io.slides import read_rgb
from hovernet.metrics import instance_stats
from hovernet.metrics.errors import FN_CAUSES, error_breakdown
from hovernet.model.checkpoints import load_model

VARIANTS = (
    "network",
    "true HV",
    "true NP",
    "true NP + HV",
    "true NP + HV, 30 px",
    "truth at model px",
)


def variant_labels(variant: str, maps, refine, true: np.ndarray, params: PostprocessParams, mpp):
    """The instance map of one image at its own pixels under `variant` (`refine`: the nucleus
    probability the outlines are refined to, as `maps_to_nuclei`; `mpp`: the model's)."""
    pred_map = np.array(maps.pred_map, np.float32)
    small = resample.labels_to_input(true, pred_map.shape)
    if variant == "truth at model px":
        return resample.labels_to_input(small, true.shape)
    min_size = MIN_SIZE if variant.endswith("30 px") else min_size_for_mpp(mpp)
    hv, np_map = hv_targets(small, small.shape, min_size=min_size)
    if "HV" in variant:
        pred_map[..., -2:] = hv
    if "NP" in variant:
        pred_map[..., -3] = np_map
        refine = (true > 0).astype(np.float32)
    inst, nuclei = postprocess(pred_map, None, maps.type_softmax, params=params)
    return resample.nuclei_to_input(inst, nuclei, true.shape, refine)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shared", type=Path)
    ap.add_argument("checkpoint", type=Path, nargs="?")
    args = ap.parse_args()
    model = load_model(args.checkpoint).eval()
    items = validation_items(args.shared)
    images = [read_rgb(path) for _, path, _ in items]
    zoom = resample.resolution_zoom(0.25, model.meta.mpp)
    maps = predict_phases_many(model, images, Phases.of(zoom, 1), 8, "auto")
    truth = [read_instance_map(label) for _, _, label in items]
    params = PostprocessParams.for_mpp(model.meta.mpp)
    causes = " / ".join(FN_CAUSES)
    print(f"| maps | MoNuSeg PQ | CoNSeP PQ | CoNSeP recall | CoNSeP misses: {causes} |")
    print("|---" * 5 + "|")
    for variant in VARIANTS:
        pq: dict[str, list[float]] = {"monuseg": [], "consep": []}
        counts: dict[str, int] = {}
        for (kind, _, _), (m, prob), true in zip(items, maps, truth, strict=True):
            refine = m.prob if prob is None else prob
            pred = variant_labels(variant, m, refine, true, params, model.meta.mpp)
            pq[kind].append(instance_stats(true, pred).pq)
            if kind == "consep":
                for key, value in error_breakdown(true, pred).counts().items():
                    counts[key] = counts.get(key, 0) + value
        misses = " / ".join(str(counts[f"fn_{c}"]) for c in FN_CAUSES)
        print(
            f"| {variant} | {np.mean(pq['monuseg']):.3f} | {np.mean(pq['consep']):.3f} | "
            f"{counts['tp'] / counts['n_true']:.3f} | {misses} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
