"""PQ of the original post-processing against slide mode's region-independent variant (the HV
extremes measured once, on the most tissue-rich 512-px windows at the processing resolution, as
`hovernet.infer.hv_calibration.calibrate_hv_ranges` does), with the bundled model, one phase, on
the MoNuSeg test images and the CoNSeP test crops at 40x (0.25 um/px).

    .venv/bin/python scripts/bundled_model/score_hv_ranges.py ../shared/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tifffile

import hovernet
from hovernet.infer.maps import maps_to_nuclei
from hovernet.infer.phased import Phases
from hovernet.infer.postprocess import PostprocessParams, hv_ranges
from hovernet.infer.predict import predict_phases_many
from hovernet.infer.resample import resolution_zoom
from hovernet.io.labels import read_label_array
from hovernet.io.slides import read_rgb
from hovernet.metrics import instance_stats

MPP = 0.25


def windows(h: np.ndarray, size: int = 512) -> list[tuple[slice, slice]]:
    """The cells of a 512 grid (the whole map when it is smaller), as calibration takes them."""
    return [
        (slice(y, y + size), slice(x, x + size))
        for y in range(0, h.shape[0], size)
        for x in range(0, h.shape[1], size)
    ][:4]


def score(model, images: list[Path], label_of) -> dict[str, float]:
    ksize = PostprocessParams.for_mpp(0.5).sobel_ksize
    pq = {"original": [], "fixed ranges": []}
    for path in images:
        image = read_rgb(path)
        zoom = resolution_zoom(MPP, 0.5, None)
        ((maps, prob),) = predict_phases_many(model, [image], Phases(zoom=zoom), 8, "fp32")
        pred = maps.pred_map
        parts = [(pred[box][..., -2], pred[box][..., -1]) for box in windows(pred)]
        border = min(ksize, min(h.shape[0] for h, _ in parts) // 4)
        ranges = hv_ranges(parts, ksize, border)
        true = label_of(path)
        for name, r in (("original", None), ("fixed ranges", ranges)):
            inst, _ = maps_to_nuclei(maps, model.nr_types, 0.5, image.shape, prob, r)
            pq[name].append(instance_stats(true, inst).pq)
    return {k: float(np.mean(v)) for k, v in pq.items()}


def main(shared: Path) -> None:
    model = hovernet.load_model()
    names = json.loads((shared / "monuseg" / "split.json").read_text())["test"]
    monuseg = [shared / "monuseg" / "images" / f"{n}.png" for n in names]
    labels = shared / "monuseg" / "labels"

    def monuseg_label(path: Path) -> np.ndarray:
        return tifffile.imread(labels / f"{path.stem}_inst.tif").astype(np.int32)

    consep = sorted((shared / "consep_patches" / "images").glob("*.png"))

    def consep_label(path: Path) -> np.ndarray:
        return read_label_array(shared / "consep_patches" / "labels" / f"{path.stem}_inst.tif")

    print("| data | original (per image) | fixed ranges (slide mode) |\n|---|---:|---:|")
    for name, images, label_of in (("MoNuSeg test", monuseg, monuseg_label),
                                   ("CoNSeP test", consep, consep_label)):  # fmt: skip
        result = score(model, images, label_of)
        print(f"| {name} ({len(images)}) | {result['original']:.4f} | "
              f"{result['fixed ranges']:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/data"))
