"""Validation of a model during training: patch figures and figures after post-processing.

- `patch_metrics`: over every validation patch (centre crop, no augmentation), the losses,
  NP Dice and accuracy (arg-max against the NP target), HV MSE and the Dice of each type
  (typed patches only), as the original's validation step.
- `instance_metrics`: the first `n` validation patches, centre crop of `crop` pixels, through
  the real tile inference (`hovernet.segment_image`: tiling, stitching, HV watershed) and scored
  with the project's metrics: PQ, DQ, SQ, AJI and Dice pooled over the crops, and for typed
  patches detection F1 and per-type F1 (`hovernet.metrics.type_stats`).
- `never_predicted_warning`: the classes the targets hold but the model never predicted (no
  pixel of the patches has them as arg-max type, or no nucleus found on the crops has them).
- `validate_run`: the figures of both for the training loop, with that warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hovernet.data.dataset import PatchDataset, load_patch
from hovernet.data.targets import crop_center
from hovernet.errors import HoverNetWarning
from hovernet.infer.predict import segment_image
from hovernet.io.type_info import TypeInfo
from hovernet.metrics.detection import instance_centroids, type_stats
from hovernet.metrics.instance import instance_stats, pool_instance_stats
from hovernet.train.data import TrainingData
from hovernet.train.losses import IGNORE, LossWeights, hovernet_losses
from hovernet.train.state import TrainParts


def _loader(datasets: Sequence[PatchDataset], batch: int, limit: int | None, workers: int):
    from torch.utils.data import ConcatDataset, DataLoader, Subset

    data = ConcatDataset(datasets)
    if limit is not None:
        data = Subset(data, range(min(limit, len(data))))
    return DataLoader(data, batch_size=batch, num_workers=workers, shuffle=False)


@dataclass(frozen=True)
class PatchOptions:
    """How `patch_metrics` runs: batch size, the loss (weights, MSGE variant), the autocast
    dtype (None: float32), the first `limit` patches (None: all), DataLoader workers."""

    batch: int = 8
    weights: LossWeights = LossWeights()
    msge_variant: str = "paper"
    amp_dtype: torch.dtype | None = None
    limit: int | None = None
    workers: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be 1 or more, not {self.batch}")


@dataclass(frozen=True)
class CropOptions:
    """How `instance_metrics` runs: the first `n` patches, centre crops of `crop` pixels,
    inference batch and precision, and `mpp` (the patches' resolution; None: the model's)."""

    n: int = 32
    crop: int = 256
    batch: int = 8
    precision: str = "auto"
    mpp: float | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError(f"batch must be 1 or more, not {self.batch}")


@torch.no_grad()
def patch_metrics(
    model: torch.nn.Module,
    datasets: Sequence[PatchDataset],
    device: torch.device,
    options: PatchOptions = PatchOptions(),
) -> dict[str, Any]:
    """The validation figures over the first `options.limit` validation patches; typed:
    `valid_never_predicted_px`, the `never_predicted` type ids by pixel."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}  # batches per term: a batch of point patches has no NP/HV term
    np_inter = np_total = np_correct = np_pixels = 0
    hv_se, hv_n = 0.0, 0
    nr_types = getattr(model, "nr_types", None)
    tp_inter = np.zeros(nr_types or 0)
    tp_pred = np.zeros(nr_types or 0, np.int64)  # pixels of arg-max type c, and of target c
    tp_true = np.zeros(nr_types or 0, np.int64)
    typed = False
    amp_dtype = options.amp_dtype
    for b in _loader(datasets, options.batch, options.limit, options.workers):
        img = b["img"].to(device).float()
        tgt = {k: v.to(device) for k, v in b.items() if k != "img"}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            out = model(img)
        total, terms = hovernet_losses(out, tgt, options.weights, options.msge_variant)
        for k, v in {"loss": total, **terms}.items():
            if k[:3] in ("np_", "hv_") and "inst_valid" in tgt and not tgt["inst_valid"].any():
                continue
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
        pred_np = out["np"].argmax(1)
        true_np = tgt["np_map"]
        keep = tgt["inst_valid"].bool() if "inst_valid" in tgt else slice(None)
        pred_np, true_np, pred_hv = pred_np[keep], true_np[keep], out["hv"][keep]
        np_inter += int(((pred_np == 1) & (true_np == 1)).sum())
        np_total += int((pred_np == 1).sum() + (true_np == 1).sum())
        np_correct += int((pred_np == true_np).sum())
        np_pixels += true_np.numel()
        hv_se += float(((pred_hv.float() - tgt["hv_map"][keep]) ** 2).sum())
        hv_n += tgt["hv_map"][keep].numel()
        if nr_types and "tp_map" in tgt:
            pred_tp = out["tp"].argmax(1)
            true_tp = tgt["tp_map"]
            valid = true_tp != IGNORE
            typed = typed or bool(valid.any())
            for c in range(1, nr_types):
                p, t = (pred_tp == c) & valid, (true_tp == c) & valid
                tp_inter[c] += int((p & t).sum())
                tp_pred[c] += int(p.sum())
                tp_true[c] += int(t.sum())
    model.train(was_training)
    result = {f"valid_{k}": v / counts[k] for k, v in sums.items()}
    result["valid_np_dice"] = 2 * np_inter / np_total if np_total else 1.0
    result["valid_np_acc"] = np_correct / max(np_pixels, 1)
    result["valid_hv_mse"] = hv_se / max(hv_n, 1)
    tp_total = tp_pred + tp_true
    for c in range(1, nr_types or 0):
        if tp_total[c]:
            result[f"valid_tp_dice_{c}"] = 2 * tp_inter[c] / tp_total[c]
    if typed:
        result["valid_never_predicted_px"] = never_predicted(tp_pred, tp_true)
    return result


def never_predicted(pred_counts: Sequence[int], true_counts: Sequence[int]) -> list[int]:
    """The type ids (background 0 aside) with a count in `true_counts` (the targets) and none
    in `pred_counts` (the model's), ascending; both are indexed by type id, and a shorter
    `pred_counts` counts 0 beyond its end."""
    return [
        c
        for c in range(1, len(true_counts))
        if true_counts[c] > 0 and (c >= len(pred_counts) or pred_counts[c] == 0)
    ]


def _class_names(ids: Sequence[int], type_info: TypeInfo | None) -> list[str]:
    info = type_info or {}
    return [info[c][0] if c in info else f"type {c}" for c in ids]


def never_predicted_warning(record: dict[str, Any], type_info: TypeInfo | None) -> str | None:
    """Replace a validation record's `valid_never_predicted_px` / `_nuclei` (type ids) by
    `valid_never_predicted` (the class names of both) and return the warning line naming them
    (None, and no key, when the model predicted every class of the targets)."""
    px = sorted(record.pop("valid_never_predicted_px", []))
    nuclei = sorted(record.pop("valid_never_predicted_nuclei", []))
    ids = sorted(set(px) | set(nuclei))
    if not ids:
        return None
    names = _class_names(ids, type_info)
    record["valid_never_predicted"] = names
    where = []
    if px:
        where.append(f"arg-max type of no pixel: {', '.join(_class_names(px, type_info))}")
    if nuclei:
        found = ", ".join(_class_names(nuclei, type_info))
        where.append(f"type of no nucleus found on the --valid-images crops: {found}")
    them = "it" if len(ids) == 1 else "them"
    return (
        f"the model never predicted {', '.join(names)} on the validation patches though "
        f"their targets hold {them} ({'; '.join(where)}): train longer or weight {them} up "
        "(--class-weights, --balance-classes, --loss-weights tp_focal=1)"
    )


def _relabel(inst: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(inst, return_inverse=True)
    return inverse.reshape(inst.shape).astype(np.int32)


@torch.no_grad()
def instance_metrics(
    model: torch.nn.Module, datasets: Sequence[PatchDataset], options: CropOptions = CropOptions()
) -> dict[str, Any]:
    """PQ, DQ, SQ, AJI, Dice (and type F1) of the model's nuclei on validation crops; typed:
    `valid_never_predicted_nuclei`, the `never_predicted` type ids by nucleus.

    `options.mpp` (the patches' resolution) scales the post-processing's pixel constants, as
    inference does with the checkpoint's mpp."""
    was_training = model.training
    model.eval()
    files = [(f, ds.with_type) for ds in datasets for f in _outline_files(ds)]
    files = files[: max(options.n, 0)]
    stats = []
    txy, ttype, pxy, ptype = [], [], [], []
    typed_model = getattr(model, "nr_types", None) is not None
    try:
        for path, typed in files:
            img, labels = load_patch(path)
            size = min(options.crop, img.shape[0], img.shape[1])
            img = np.ascontiguousarray(crop_center(img, (size, size)))
            labels = crop_center(labels, (size, size))
            true = _relabel(labels[..., 0])
            pred, nuclei, _ = segment_image(
                model,
                img,
                batch_size=options.batch,
                precision=options.precision,
                input_mpp=options.mpp,
                proc_mpp=options.mpp,
            )
            stats.append(instance_stats(true, pred))
            if typed and typed_model:
                _, xy, types = instance_centroids(true, labels[..., 1])
                txy.append(xy)
                ttype.append(types)
                ids = sorted(nuclei)
                pxy.append(np.array([nuclei[i]["centroid"] for i in ids], float).reshape(-1, 2))
                ptype.append(np.array([nuclei[i]["type"] or 0 for i in ids], np.int64))
    finally:
        model.train(was_training)
    if not stats:
        return {}
    pooled = pool_instance_stats(stats)
    result = {f"valid_{k}": float(pooled[k]) for k in ("pq", "dq", "sq", "aji", "dice")}
    if txy:
        ts = type_stats(txy, ttype, pxy, ptype)
        result["valid_f1_d"] = float(ts.f1_d)
        result["valid_type_acc"] = float(ts.acc)
        for c, f1 in ts.f1_type.items():
            result[f"valid_f1_type_{c}"] = float(f1)
        true_n = np.bincount(np.concatenate(ttype).astype(np.int64), minlength=1)
        pred_n = np.bincount(np.concatenate(ptype).astype(np.int64), minlength=1)
        result["valid_never_predicted_nuclei"] = never_predicted(pred_n, true_n)
    return result


def _outline_files(ds: PatchDataset) -> list:
    """The patch files with outlines (point patches have no nuclei to score by instance)."""
    rows = ds.manifest_rows
    if not ds.inst_flag or rows is None:
        return ds.files
    return [f for f, row in zip(ds.files, rows, strict=True) if row.get("points") != "1"]


def validate_run(parts: TrainParts, data: TrainingData, workers: int, epoch: int) -> dict:
    """The validation figures of the model being scored (the moving average when kept); warns
    of classes of the targets that it never predicted."""
    cfg = parts.cfg
    if not data.valid:
        return {}
    scored = parts.net if parts.ema is None else parts.ema.module
    patches = PatchOptions(
        cfg.batch, cfg.weights, cfg.msge_variant, parts.amp_dtype, cfg.valid_patches, workers
    )
    record = patch_metrics(scored, data.valid, parts.device, patches)
    if cfg.valid_images > 0:
        crops = CropOptions(cfg.valid_images, cfg.valid_crop, cfg.batch, cfg.precision, cfg.mpp)
        record.update(instance_metrics(scored, data.valid, crops))
    line = never_predicted_warning(record, parts.type_info)
    if line:
        warnings.warn(HoverNetWarning(f"epoch {epoch}: {line}"), stacklevel=2)
    return record
