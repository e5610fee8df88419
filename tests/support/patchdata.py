"""Test helper: small patch folders in the extract-patches layout, built from real CoNSeP crops.

Each 540 x 540 patch is a 3 x 3 mosaic of the 256 x 256 CoNSeP test crops (real images, instance
and type maps; instance ids made unique across the mosaic), cropped to the patch size.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import tifffile
from conftest import DATA

CONSEP = DATA / "consep_patches"
NR_TYPES = 4
COLOURS = {1: (255, 255, 0), 2: (255, 0, 0), 3: (0, 255, 0), 4: (0, 0, 255)}


def consep_names() -> list[str]:
    return sorted(p.stem for p in (CONSEP / "images").glob("*.png"))


def consep_crop(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = cv2.cvtColor(cv2.imread(str(CONSEP / "images" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    inst = tifffile.imread(CONSEP / "labels" / f"{name}_inst.tif").astype(np.int32)
    typ = tifffile.imread(CONSEP / "labels" / f"{name}_type.tif").astype(np.uint8)
    return img, inst, typ


def mosaic_patch(k: int, size: int = 540) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch number k: crops 9k..9k+8 in a 3 x 3 mosaic, top-left size x size."""
    names = consep_names()
    rows_img, rows_inst, rows_typ = [], [], []
    offset = 0
    for r in range(3):
        parts = [consep_crop(names[(9 * k + 3 * r + c) % len(names)]) for c in range(3)]
        rows_img.append(np.concatenate([p[0] for p in parts], axis=1))
        insts = []
        for _, inst, _ in parts:
            insts.append(np.where(inst > 0, inst + offset, 0))
            offset += int(inst.max())
        rows_inst.append(np.concatenate(insts, axis=1))
        rows_typ.append(np.concatenate([p[2] for p in parts], axis=1))
    img, inst, typ = (np.concatenate(x)[:size, :size] for x in (rows_img, rows_inst, rows_typ))
    return img, inst, typ


def instance_counts(inst: np.ndarray, typ: np.ndarray) -> dict[int, int]:
    pairs = {(int(i), int(t)) for i, t in zip(inst.ravel(), typ.ravel(), strict=True) if i and t}
    counts = dict.fromkeys(range(1, NR_TYPES + 1), 0)
    for _, t in pairs:
        counts[t] += 1
    return counts


def make_patch_folder(
    root: Path,
    train: list[int] = (0, 1, 2),
    valid: list[int] = (3,),
    size: int = 540,
    typed: bool = True,
) -> Path:
    """Write ``root/{train,valid}/mosaic_<k>.npz`` (mosaic patch numbers k), ``manifest.csv``
    and ``type_info.json``."""
    rows = []
    for k in [*train, *valid]:
        split = "train" if k in train else "valid"
        img, inst, typ = mosaic_patch(k, size)
        rel = f"{split}/mosaic_{k:03d}.npz"
        (root / split).mkdir(parents=True, exist_ok=True)
        arrays = {"img": img, "inst": inst.astype(np.uint16)}
        if typed:
            arrays["type"] = typ
        np.savez(root / rel, **arrays)
        row = {"split": split, "path": rel, "source": f"mosaic_{k}", "y": 0, "x": 0}
        row.update(size=size, n_nuclei=len(np.unique(inst)) - 1)
        if typed:
            row.update({f"n_type_{t}": n for t, n in instance_counts(inst, typ).items()})
        rows.append(row)
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if typed:
        names = json.loads((CONSEP / "types.json").read_text())
        info = {k: [v, list(COLOURS.get(int(k), (0, 0, 0)))] for k, v in names.items()}
        (root / "type_info.json").write_text(json.dumps(info))
    return root


def save_original_npy(path: Path, img: np.ndarray, inst: np.ndarray, typ: np.ndarray) -> None:
    """The original project's patch format: H x W x 5 int32 (RGB, instance, type)."""
    np.save(path, np.dstack([img, inst, typ]).astype(np.int32))
