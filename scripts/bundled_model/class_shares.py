"""How a model divides the nuclei of tissue it was not typed on among its classes: the share of
each class (and of unclassified nuclei) on the 13 MoNuSeg training tiles (multi-organ, 40x, no
type labels: their type loss is masked in training) and on the bundled demo slide
(CMU-1-Small-Region, skin, 20x, read whole). No truth exists there; a model whose shares swing
far from another's on the same nuclei is looked at before it ships (docs/model-card.md).

   python scripts/bundled_model/class_shares.py SHARED_DATA CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import openslide

from hovernet.demo import SAMPLE_SLIDE
from hovernet.infer.predict import segment_image
from hovernet.io.slides import read_rgb
from hovernet.model.checkpoints import load_model


def shares(model, images: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Nuclei per type id (0 = unclassified) over `images` ((RGB, um/px) pairs)."""
    counts = np.zeros(model.nr_types, int)
    for image, mpp in images:
        _, nuclei, _ = segment_image(model, image, input_mpp=mpp)
        counts += np.bincount([n["type"] for n in nuclei.values()], minlength=model.nr_types)
    return counts


def main(shared: Path, checkpoints: list[str]) -> None:
    warnings.simplefilter("ignore")  # the phases hint on 40x tiles
    names = json.loads((shared / "monuseg/split.json").read_text())["train"]
    monuseg = [(read_rgb(shared / f"monuseg/images/{n}.png"), 0.25) for n in names]
    slide = openslide.OpenSlide(str(SAMPLE_SLIDE))
    demo = [(np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB")),
             float(slide.properties[openslide.PROPERTY_NAME_MPP_X]))]  # fmt: skip
    print("| model | images | nuclei | unclassified | share of each type |")
    for path in checkpoints:
        model = load_model(path)
        info = model.meta.type_info or {}
        for label, images in (("MoNuSeg train tiles", monuseg), ("demo slide", demo)):
            counts = shares(model, images)
            cells = [f"{info.get(t, (f'type {t}',))[0]} {c / counts.sum():.1%}"
                     for t, c in enumerate(counts) if t]  # fmt: skip
            print(
                f"| {Path(path).name} | {label} | {counts.sum()} | "
                f"{counts[0] / counts.sum():.1%} | {' / '.join(cells)} |",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
