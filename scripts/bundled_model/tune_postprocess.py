"""Post-processing settings and nucleus type rules of a model, scored on the validation images
(score.sh SPLIT=valid: 3 MoNuSeg tiles, 80 CoNSeP crops). The network runs once; each setting
re-runs only the watershed and the scoring, so a grid takes minutes.

   python scripts/bundled_model/tune_postprocess.py SHARED_DATA [CHECKPOINT] [--grid JSON]
       [--type-weights JSON]

--grid: a list of [foreground threshold, marker threshold, marker opening px or null,
minimum size px or null] (null: the model resolution's default); the first row of the table is
always the original's settings. The type rules, scored on each setting's nuclei (CoNSeP types,
centroids paired within 3 um as `hovernet stats --mode type`):
- vote: the original's (majority of the pixels' arg-max types; background loses to any type);
- next-best: the vote, but a nucleus the vote leaves unclassified takes its most likely type;
- mean-prob: the type of highest mean softmax over the nucleus (background left out), each
  class's probability multiplied by --type-weights (default all 1) first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from hovernet.infer import resample
from hovernet.infer.phased import Phases
from hovernet.infer.postprocess import PostprocessParams, postprocess
from hovernet.infer.predict import predict_phases_many
from hovernet.io.labels import list_label_files, read_centroids, read_instance_map
from hovernet.io.slides import read_rgb
from hovernet.metrics import instance_stats, radius_pixels, type_stats
from hovernet.model.checkpoints import load_model

VALIDATION = json.loads((Path(__file__).parent / "validation.json").read_text())  # as score.sh
GRID = [[f, m, None, None] for f in (0.4, 0.5, 0.6) for m in (0.3, 0.4, 0.5)] + [
    [0.5, 0.4, 1, None],
    [0.5, 0.4, 5, None],
    [0.5, 0.4, None, 8],
]


def validation_items(shared: Path) -> list[tuple[str, Path, object]]:
    """(set, image, label file) of the validation images, as score.sh SPLIT=valid."""
    mon = list_label_files(shared / "monuseg/labels")
    con = list_label_files(shared / "consep_train_patches/labels")
    items = [("monuseg", shared / f"monuseg/images/{n}.png", mon[n]) for n in VALIDATION["monuseg"]]
    for src in sorted((shared / "consep_train_patches/images").glob("*.jpg")):
        if src.stem.rsplit("_", 1)[0] in VALIDATION["consep_tiles"]:
            items.append(("consep", src, con[src.stem]))
    return items


def typed_centroids(nuclei: dict, rule: str, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xy = np.array([n["centroid"] for n in nuclei.values()], float).reshape(-1, 2)
    types = []
    for n in nuclei.values():
        best = int(np.argmax(np.asarray(n["type_probs"])[1:] * weights[1:]) + 1)
        types.append(
            best if rule == "mean-prob" or (rule == "next-best" and not n["type"]) else n["type"]
        )
    return xy, np.array(types, int)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shared", type=Path)
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("--grid", type=json.loads, default=GRID)
    ap.add_argument("--type-weights", type=json.loads, default=None)
    args = ap.parse_args()
    model = load_model(args.checkpoint).eval()
    weights = np.asarray(args.type_weights or [1.0] * model.nr_types, float)
    items = validation_items(args.shared)
    images = [read_rgb(path) for _, path, _ in items]
    zoom = resample.resolution_zoom(0.25, model.meta.mpp)
    maps = predict_phases_many(model, images, Phases.of(zoom, 1), 8, "auto")
    truth = [read_instance_map(label) for _, _, label in items]
    points = [read_centroids(lab) if kind == "consep" else None for kind, _, lab in items]
    radius = radius_pixels(3, 0.25)
    base = PostprocessParams.for_mpp(model.meta.mpp)
    rules = ("vote", "next-best", "mean-prob")
    print(
        "| foreground / marker / opening / min size | MoNuSeg PQ | CoNSeP PQ | det. F1 | "
        "recall | type F1 other / infl. / epith. / spindle (vote) | mean type F1 "
        + " / ".join(rules)
        + " | unclassified |"
    )
    print("|---" * 8 + "|")
    for fg, mk, opening, size in [[0.5, 0.4, None, None], *args.grid]:
        params = dataclasses.replace(
            base,
            foreground_threshold=fg,
            marker_threshold=mk,
            marker_open_ksize=opening or base.marker_open_ksize,
            min_object_size=size or base.min_object_size,
        )
        pq: dict[str, list[float]] = {"monuseg": [], "consep": []}
        found = []
        for (kind, _, _), (m, prob), image, true in zip(items, maps, images, truth, strict=True):
            # maps_to_nuclei's two steps, with `params` in place of the resolution's constants
            found_map = postprocess(m.pred_map, model.nr_types, m.type_softmax, params=params)
            refine = m.prob if prob is None else prob
            inst, nuclei = resample.nuclei_to_input(*found_map, image.shape, refine)
            pq[kind].append(instance_stats(true, inst).pq)
            found.append(nuclei)
        consep = [i for i, item in enumerate(items) if item[0] == "consep"]
        means, stats, vote_types = [], {}, None
        for rule in rules:
            pred = [typed_centroids(found[i], rule, weights) for i in consep]
            if rule == "vote":
                vote_types = np.concatenate([p[1] for p in pred])
            stats[rule] = type_stats(
                [points[i][0] for i in consep],
                [points[i][1] for i in consep],
                [p[0] for p in pred],
                [p[1] for p in pred],
                radius=radius,
            )
            means.append(float(np.mean(list(stats[rule].f1_type.values()))))
        vote = stats["vote"]
        unclassified = np.mean(vote_types == 0)
        f1 = " / ".join(f"{vote.f1_type[k]:.3f}" for k in sorted(vote.f1_type))
        print(
            f"| {fg} / {mk} / {params.marker_open_ksize} / {params.min_object_size} | "
            f"{np.mean(pq['monuseg']):.3f} | {np.mean(pq['consep']):.3f} | {vote.f1_d:.3f} | "
            f"{vote.recall_d:.3f} | {f1} | {' / '.join(f'{v:.3f}' for v in means)} | "
            f"{unclassified:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
