"""`hovernet stats --mode pannuke` and `--mode conic`: the per-class protocols of PanNuke and
CoNIC (definitions in hovernet.metrics.multiclass / counts, docs/metrics.md).

Each side is a folder of per-image files (as the other modes read) or one PanNuke / CoNIC
array (`hovernet.io.dataset_arrays`), whose image i is named by its zero-padded index; a
folder paired with an array has its all-digit names read as indices (`7.mat` = image 7).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.io.dataset_arrays import CONIC_COUNTS, ArrayLayout, find_array_layout, index_names
from hovernet.io.labels import list_label_files, read_typed_map
from hovernet.io.prediction_files import list_predictions, prediction_folder, read_prediction_typed
from hovernet.metrics import (
    channels_to_maps,
    class_channels,
    class_counts,
    conic_summary,
    count_r2,
    pannuke_image,
    pannuke_summary,
    per_class_pq,
    pq_counts,
)

CLASS_MODES = ("pannuke", "conic")


@dataclass(frozen=True)
class ArrayImage:
    """Image `index` of a PanNuke / CoNIC array."""

    layout: ArrayLayout
    index: int

    @property
    def path(self) -> str:
        return f"{self.layout.path}[{self.index}]"


def open_sides(pred_dir: Path, true_dir: Path) -> tuple[dict, dict, Path]:
    """name -> image of the predictions and of the truth, and the folder predictions were read
    from (tile mode's output: its mat/)."""
    layouts = {"pred": find_array_layout(pred_dir), "true": find_array_layout(true_dir)}
    sizes = [lay.n_images for lay in layouts.values() if lay is not None]
    width = len(str(max(sizes) - 1)) if sizes else 0
    sides = {}
    for side, layout in layouts.items():
        if layout is not None:
            names = index_names(layout.n_images, width)
            sides[side] = {n: ArrayImage(layout, i) for i, n in enumerate(names)}
            continue
        if side == "pred":
            files = list_predictions(pred_dir, "--pred_dir")
        else:
            files = list_label_files(true_dir, "--true_dir")
        if width:  # paired with an array: all-digit names are indices
            files = {(f"{int(n):0{width}d}" if n.isdigit() else n): f for n, f in files.items()}
        sides[side] = files
    pred_from = layouts["pred"].path if layouts["pred"] else prediction_folder(pred_dir)
    return sides["pred"], sides["true"], Path(pred_from)


def _layout(pairs: list) -> tuple[ArrayLayout | None, ArrayLayout | None]:
    _, p, t = pairs[0]
    return (
        p.layout if isinstance(p, ArrayImage) else None,
        t.layout if isinstance(t, ArrayImage) else None,
    )


def class_ids_of(type_ids, pairs: list) -> list[int]:
    """--type-ids; else a dataset array's classes (truth first); else the non-zero types
    present in the truth (as type mode)."""
    pred_layout, true_layout = _layout(pairs)
    layout = true_layout or pred_layout
    fixed = sorted(layout.class_names) if layout is not None else None
    if type_ids:
        ids = sorted({int(c) for c in type_ids})
        if fixed is not None and not set(ids) <= set(fixed):
            raise HoverNetError(
                f"--type-ids {ids}: {layout.path} holds the classes {fixed} only; pick among them"
            )
        if not ids or ids[0] <= 0:
            raise HoverNetError(f"--type-ids must be class ids >= 1, got {ids}")
        return ids
    if fixed is not None:
        return fixed
    present: set[int] = set()
    for _, _, t in pairs:
        present.update(int(v) for v in np.unique(read_maps(t, None)[1]))
    present.discard(0)
    if not present:
        raise HoverNetError(
            "the truth has no typed nucleus (every type map is 0); give truth with types or "
            "pass --type-ids"
        )
    return sorted(present)


def read_maps(image, shape) -> tuple[np.ndarray, np.ndarray]:
    """(instance map, type map) of one image; `shape` (the truth's) places JSON / slides."""
    if isinstance(image, ArrayImage):
        arr = image.layout.read(image.index)
        if image.layout.kind == "conic":
            return arr[..., 0], arr[..., 1]
        return channels_to_maps(arr, sorted(image.layout.class_names))
    if shape is None:
        return read_typed_map(image)
    return read_prediction_typed(image, shape)


def read_channels(image, class_ids: list[int], shape) -> np.ndarray:
    """H x W x C per-class stack (PanNuke masks as they are, other maps split by class)."""
    if isinstance(image, ArrayImage) and image.layout.kind == "pannuke":
        return image.layout.read(image.index)[..., [c - 1 for c in class_ids]]
    return class_channels(*read_maps(image, shape), class_ids)


def _same_shape(pred_shape, true_shape, p, t) -> None:
    if tuple(pred_shape[:2]) != tuple(true_shape[:2]):
        raise HoverNetError(
            f"{p.path} is {pred_shape[0]} x {pred_shape[1]} but its truth {t.path} is "
            f"{true_shape[0]} x {true_shape[1]}; compare maps of the same image at the same "
            "resolution"
        )


def _none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _class_names(pairs: list) -> dict[str, str] | None:
    pred_layout, true_layout = _layout(pairs)
    layout = true_layout or pred_layout
    return {str(k): v for k, v in layout.class_names.items()} if layout else None


def _tissues(pairs: list) -> list[str]:
    _, true_layout = _layout(pairs)
    if true_layout is None:
        return ["all"] * len(pairs)
    if true_layout.kind == "pannuke" and true_layout.tissues is None:
        warnings.warn(
            HoverNetWarning(
                f"no types.npy beside {true_layout.path}: all images are averaged as one "
                "tissue (PanNuke averages per tissue first); put the fold's types.npy there"
            ),
            stacklevel=2,
        )
    tissues = true_layout.tissues
    return ["all"] * len(pairs) if tissues is None else [tissues[t.index] for _, _, t in pairs]


def run_pannuke(cfg, pairs: list, progress=None) -> dict:
    """PanNuke's mPQ / bPQ (per image, per class, per tissue) of the matched images."""
    ids = class_ids_of(cfg.type_ids, pairs)
    tissues = _tissues(pairs)
    class_pq, bpq = [], []
    for _, p, t in pairs:
        true = read_channels(t, ids, None)
        pred = read_channels(p, ids, true.shape[:2])
        _same_shape(pred.shape, true.shape, p, t)
        values, b = pannuke_image(true, pred, cfg.match_iou)
        class_pq.append(values)
        bpq.append(b)
        if progress is not None:
            progress.advance(1)
    s = pannuke_summary(class_pq, bpq, tissues, ids)
    per_image = {}
    for i, (name, _, _) in enumerate(pairs):
        per_image[name] = {
            "tissue": tissues[i],
            "mpq": _none(s["image_mpq"][i]),
            "bpq": _none(bpq[i]),
            "pq": {str(c): _none(v) for c, v in zip(ids, class_pq[i], strict=True)},
        }
    per_class = {
        str(c): {
            "pq": _none(s["per_class"][c]),
            "n_images": sum(not math.isnan(v[k]) for v in class_pq),
        }
        for k, c in enumerate(ids)
    }
    return {
        "mode": "pannuke",
        "mpq": _none(s["mpq"]),
        "bpq": _none(s["bpq"]),
        "class_ids": ids,
        "class_names": _class_names(pairs),
        "per_class": per_class,
        "per_tissue": {
            k: {"mpq": _none(v["mpq"]), "bpq": _none(v["bpq"]), "n_images": v["n_images"]}
            for k, v in s["per_tissue"].items()
        },
        "per_image": per_image,
        "match_iou": cfg.match_iou,
    }


def _csv_counts(image, ids: list[int]) -> np.ndarray | None:
    """The counts.csv row of an array image, columns in `ids` order (None: no counts.csv)."""
    if not isinstance(image, ArrayImage) or image.layout.counts is None:
        return None
    columns = image.layout.count_classes
    missing = [c for c in ids if c not in columns]
    if missing:
        raise HoverNetError(
            f"{image.layout.path.parent / CONIC_COUNTS} has no column for class(es) {missing}; "
            "add them or pass --type-ids with the classes it counts"
        )
    return image.layout.counts[image.index, [columns.index(c) for c in ids]]


def _counts_source(image, crop: int) -> str:
    if isinstance(image, ArrayImage) and image.layout.counts is not None:
        return str(image.layout.path.parent / CONIC_COUNTS)
    return f"maps, central {crop} px" if crop else "maps, whole image"


def run_conic(cfg, pairs: list, progress=None) -> dict:
    """CoNIC's mPQ+ (counts pooled over all images) and R^2 of the per-class counts."""
    ids = class_ids_of(cfg.type_ids, pairs)
    per_image, counts, true_n, pred_n = {}, [], [], []
    for name, p, t in pairs:
        ti, tt = read_maps(t, None)
        pi, pt = read_maps(p, ti.shape)
        _same_shape(pi.shape, ti.shape, p, t)
        c = per_class_pq(ti, tt, pi, pt, ids, cfg.match_iou)
        counts.append(c)
        tn = _csv_counts(t, ids)
        tn = class_counts(ti, tt, ids, cfg.count_crop) if tn is None else tn
        pn = _csv_counts(p, ids)
        pn = class_counts(pi, pt, ids, cfg.count_crop) if pn is None else pn
        true_n.append(tn)
        pred_n.append(pn)
        per_image[name] = {
            "pq": pq_counts(ti, pi, cfg.match_iou).dq_sq_pq(eps=1.0e-6)[2],
            "true_count": {str(k): _num(v) for k, v in zip(ids, tn, strict=True)},
            "pred_count": {str(k): _num(v) for k, v in zip(ids, pn, strict=True)},
            **{key: {str(k): getattr(c[k], key) for k in ids} for key in ("tp", "fp", "fn")},
        }
        if progress is not None:
            progress.advance(1)
    pooled = conic_summary(counts, ids)
    r2 = count_r2(np.array(true_n), np.array(pred_n))
    if len(pairs) < 2:
        warnings.warn(HoverNetWarning("R^2 needs at least two images; it is null"), stacklevel=2)
    per_class = {
        str(c): {**pooled["per_class"][c], "r2": _none(r2["per_class"][k])}
        for k, c in enumerate(ids)
    }
    _, p0, t0 = pairs[0]
    return {
        "mode": "conic",
        "mpq_plus": pooled["mpq_plus"],
        "r2": _none(r2["r2"]),
        "pq": float(np.mean([v["pq"] for v in per_image.values()])),
        "class_ids": ids,
        "class_names": _class_names(pairs),
        "per_class": per_class,
        "per_image": per_image,
        "counts_from": {
            "true": _counts_source(t0, cfg.count_crop),
            "pred": _counts_source(p0, cfg.count_crop),
        },
        "count_crop": cfg.count_crop,
        "match_iou": cfg.match_iou,
    }


def _num(value) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _label(result: dict, c: str) -> str:
    names = result.get("class_names") or {}
    return f"{c} {names[c]}" if c in names else c


def table_rows(result: dict) -> tuple[list[str], list[list]]:
    """Per-image rows and one summary row, for the CSV beside --out."""
    ids = [str(c) for c in result["class_ids"]]
    if result["mode"] == "pannuke":
        header = ["image", "tissue", "mpq", "bpq", *(f"pq_{c}" for c in ids)]
        rows = [
            [n, v["tissue"], v["mpq"], v["bpq"], *(v["pq"][c] for c in ids)]
            for n, v in result["per_image"].items()
        ]
        pq = [result["per_class"][c]["pq"] for c in ids]
        return header, [*rows, ["pannuke", "", result["mpq"], result["bpq"], *pq]]
    keys = ("true_count", "pred_count", "tp", "fp", "fn")
    header = ["image", "pq", *(f"{k}_{c}" for c in ids for k in keys)]
    rows = [
        [n, v["pq"], *(v[k][c] for c in ids for k in keys)] for n, v in result["per_image"].items()
    ]
    total = [sum(r[j] for r in rows) for j in range(2, len(header))]
    return header, [*rows, ["total", result["pq"], *total]]


def summary_tables(result: dict) -> tuple[list[tuple[list[str], list[list]]], str]:
    """The short printed tables (per class; PanNuke: per tissue too) and the closing line."""
    ids = [str(c) for c in result["class_ids"]]
    n = result["n_images"]
    if result["mode"] == "pannuke":
        per_class = (
            ["class", "pq", "images"],
            [[_label(result, c), *result["per_class"][c].values()] for c in ids],
        )
        tables = [per_class]
        if len(result["per_tissue"]) > 1:
            rows = [[k, v["mpq"], v["bpq"], v["n_images"]] for k, v in result["per_tissue"].items()]
            tables.append((["tissue", "mpq", "bpq", "images"], rows))
        line = (
            f"PanNuke over {n} images, {len(result['per_tissue'])} tissue(s): "
            f"mPQ={_f(result['mpq'])}  bPQ={_f(result['bpq'])}"
        )
        return tables, line
    keys = ("pq", "dq", "sq", "tp", "fp", "fn", "r2")
    rows = [[_label(result, c), *(result["per_class"][c][k] for k in keys)] for c in ids]
    line = (
        f"CoNIC over {n} images: mPQ+={_f(result['mpq_plus'])}  R2={_f(result['r2'])}  "
        f"PQ={_f(result['pq'])}  (counts: truth from {result['counts_from']['true']}, "
        f"prediction from {result['counts_from']['pred']})"
    )
    return [(["class", "pq+", "dq", "sq", "tp", "fp", "fn", "r2"], rows)], line


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.5f}"
