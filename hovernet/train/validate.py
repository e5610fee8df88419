"""Validation of a model during training: patch figures and figures after post-processing.

- `patch_metrics`: over every validation patch (centre crop, no augmentation), the losses,
  NP Dice and accuracy (arg-max against the NP target), HV MSE and the Dice of each type
  (typed patches only), as the original's validation step.
- `instance_metrics`: the first `n` validation patches, centre crop of `crop` pixels, through
  the real tile inference (`hovernet.segment_image`: tiling, stitching, HV watershed) and scored
  with the project's metrics: PQ, DQ, SQ, AJI and Dice pooled over the crops, and for typed
  patches detection F1 and per-type F1 (`hovernet.metrics.type_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hovernet.data.dataset import PatchDataset, load_patch
from hovernet.data.targets import crop_center
from hovernet.infer.predict import segment_image
from hovernet.metrics.detection import instance_centroids, type_stats
from hovernet.metrics.instance import instance_stats, pool_instance_stats
from hovernet.train.losses import IGNORE, LossWeights, hovernet_losses


def _loader(datasets: Sequence[PatchDataset], batch: int, limit: int | None, workers: int):
    from torch.utils.data import ConcatDataset, DataLoader, Subset

    data = ConcatDataset(datasets)
    if limit is not None:
        data = Subset(data, range(min(limit, len(data))))
    return DataLoader(data, batch_size=batch, num_workers=workers, shuffle=False)


@torch.no_grad()
def patch_metrics(
    model: torch.nn.Module,
    datasets: Sequence[PatchDataset],
    device: torch.device,
    batch: int = 8,
    weights: LossWeights = LossWeights(),
    msge_variant: str = "paper",
    amp_dtype: torch.dtype | None = None,
    limit: int | None = None,
    workers: int = 0,
) -> dict[str, float]:
    """The validation figures over the first `limit` (None: all) validation patches."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n_batches = 0
    np_inter = np_total = np_correct = np_pixels = 0
    hv_se, hv_n = 0.0, 0
    nr_types = getattr(model, "nr_types", None)
    tp_inter = np.zeros(nr_types or 0)
    tp_total = np.zeros(nr_types or 0)
    for b in _loader(datasets, batch, limit, workers):
        img = b["img"].to(device).float()
        tgt = {k: v.to(device) for k, v in b.items() if k != "img"}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
            out = model(img)
        total, terms = hovernet_losses(out, tgt, weights, msge_variant)
        for k, v in {"loss": total, **terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n_batches += 1
        pred_np = out["np"].argmax(1)
        true_np = tgt["np_map"]
        np_inter += int(((pred_np == 1) & (true_np == 1)).sum())
        np_total += int((pred_np == 1).sum() + (true_np == 1).sum())
        np_correct += int((pred_np == true_np).sum())
        np_pixels += true_np.numel()
        hv_se += float(((out["hv"].float() - tgt["hv_map"]) ** 2).sum())
        hv_n += tgt["hv_map"].numel()
        if nr_types and "tp_map" in tgt:
            pred_tp = out["tp"].argmax(1)
            true_tp = tgt["tp_map"]
            valid = true_tp != IGNORE
            for c in range(1, nr_types):
                p, t = (pred_tp == c) & valid, (true_tp == c) & valid
                tp_inter[c] += int((p & t).sum())
                tp_total[c] += int(p.sum() + t.sum())
    model.train(was_training)
    result = {f"valid_{k}": v / max(n_batches, 1) for k, v in sums.items()}
    result["valid_np_dice"] = 2 * np_inter / np_total if np_total else 1.0
    result["valid_np_acc"] = np_correct / max(np_pixels, 1)
    result["valid_hv_mse"] = hv_se / max(hv_n, 1)
    for c in range(1, nr_types or 0):
        if tp_total[c]:
            result[f"valid_tp_dice_{c}"] = 2 * tp_inter[c] / tp_total[c]
    return result


def _relabel(inst: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(inst, return_inverse=True)
    return inverse.reshape(inst.shape).astype(np.int32)


@torch.no_grad()
def instance_metrics(
    model: torch.nn.Module,
    datasets: Sequence[PatchDataset],
    n: int = 32,
    crop: int = 256,
    batch: int = 8,
    precision: str = "auto",
    mpp: float | None = None,
) -> dict[str, float]:
    """PQ, DQ, SQ, AJI, Dice (and type F1) of the model's nuclei on validation crops.

    `mpp` (the patches' resolution) scales the post-processing's pixel constants, as inference
    does with the checkpoint's mpp."""
    was_training = model.training
    model.eval()
    files = [(f, ds.with_type) for ds in datasets for f in ds.files][: max(n, 0)]
    stats = []
    txy, ttype, pxy, ptype = [], [], [], []
    typed_model = getattr(model, "nr_types", None) is not None
    try:
        for path, typed in files:
            img, labels = load_patch(path)
            size = min(crop, img.shape[0], img.shape[1])
            img = np.ascontiguousarray(crop_center(img, (size, size)))
            labels = crop_center(labels, (size, size))
            true = _relabel(labels[..., 0])
            pred, nuclei, _ = segment_image(
                model, img, batch_size=batch, precision=precision, proc_mpp=mpp
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
    return result
