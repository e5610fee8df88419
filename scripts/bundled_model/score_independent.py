"""Scores of a model on data that the bundled models never trained on or chose by
(docs/model-card.md, "Other data"):

- CRCHisto test split (20 colorectal images at 20x, points only: a class at the centre of
  every marked nucleus, 7,356 of the points without a class): detection precision / recall /
  F1 and per-class type F1, centroids paired within 3 um (6 px at 0.5 um/px), unlabelled points
  counting for detection only. Only lite-v2 never saw CRCHisto; a model trained on its train
  split is scored here on held-out images of the same source.
- CryoNuSeg's 2 partially annotated frozen-section tiles (thyroid, pancreas; 175 outlined
  nuclei): only what partial outlines allow, the recall of the outlined nuclei (matched at IoU >
  0.5) and the mean IoU of those matches (SQ); precision cannot be measured there.

   python scripts/bundled_model/score_independent.py SHARED_DATA [CHECKPOINT] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hovernet import load_model, segment_image
from hovernet.io.labels import read_instance_map
from hovernet.io.points import read_points
from hovernet.io.slides import read_rgb
from hovernet.metrics.detection import type_stats
from hovernet.metrics.instance import instance_stats

CRC_CLASSES = {"others": 1, "inflammatory": 2, "epithelial": 3, "fibroblast": 4, "unlabelled": -1}
CRC_MPP = 0.5  # 20x by the dataset's paper
CRYO_MPP = {"TCGA-DE-A4MA-01A-01-TSA": 0.248, "TCGA-S4-A8RO-01A-01-TS1": 0.2525}  # TIFF tags


def centroids_and_types(nuclei: dict) -> tuple[np.ndarray, np.ndarray]:
    xy = np.array([n["centroid"] for n in nuclei.values()], float).reshape(-1, 2)
    types = np.array([n["type"] or 0 for n in nuclei.values()], np.int64)
    return xy, types


def score_crchisto(model, data: Path) -> dict:
    names = json.loads((data / "split.json").read_text())["test"]
    true_xy, true_t, pred_xy, pred_t = [], [], [], []
    for name in names:
        pts = read_points(data / "points" / f"{name}.csv", base=1)
        true_xy.append(np.stack([pts.x, pts.y], 1))
        true_t.append(np.array([CRC_CLASSES[c.lower()] for c in pts.names], np.int64))
        _, nuclei, _ = segment_image(model, read_rgb(data / "images" / f"{name}.png"),
                                     input_mpp=CRC_MPP)  # fmt: skip
        xy, types = centroids_and_types(nuclei)
        pred_xy.append(xy)
        pred_t.append(types)
    stats = type_stats(true_xy, true_t, pred_xy, pred_t, radius=3.0 / CRC_MPP,
                       type_ids=[1, 2, 3, 4], exhaustive=False)  # fmt: skip
    return {"images": len(names), "points": int(sum(len(t) for t in true_t)), **stats.as_dict()}


def score_cryonuseg(model, data: Path) -> dict:
    tp = n_true = 0
    iou = 0.0
    for name, mpp in CRYO_MPP.items():
        true = read_instance_map(data / "labels" / f"{name}_inst.tif")
        inst, _, _ = segment_image(model, read_rgb(data / "images" / f"{name}.png"),
                                   input_mpp=mpp)  # fmt: skip
        s = instance_stats(true, inst)
        tp, n_true, iou = tp + s.tp, n_true + s.n_true, iou + s.iou_sum
    return {"images": len(CRYO_MPP), "outlined": n_true, "recall": tp / n_true,
            "sq": iou / max(tp, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared", type=Path)
    ap.add_argument("checkpoint", nargs="?", default=None)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    model = load_model(args.checkpoint, device="cpu")
    result = {
        "crchisto_test": score_crchisto(model, args.shared / "crchisto"),
        "cryonuseg_partial": score_cryonuseg(model, args.shared / "cryonuseg_partial"),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    c, k = result["crchisto_test"], result["cryonuseg_partial"]
    f1 = " / ".join(f"{c['f1_type'][str(t)]:.3f}" for t in (1, 2, 3, 4))
    print(
        f"CRCHisto test: detection P {c['precision_d']:.3f} R {c['recall_d']:.3f} "
        f"F1 {c['f1_d']:.3f}; type F1 oth/inf/epi/spi {f1}; acc {c['acc']:.3f}",
        file=sys.stderr,
    )
    print(f"CryoNuSeg partial: recall {k['recall']:.3f} of {k['outlined']} outlined, "
          f"SQ {k['sq']:.3f}", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
