"""Resample the public training data in ../shared/data to 0.5 um/px for the bundled `lite` model.

Writes three folders in the shared layout (`images/<name>.png`, `labels/<name>_inst.tif` and,
for CoNSeP, `labels/<name>_type.tif`), ready for `hovernet extract-patches`:

- monuseg/: the 13 MoNuSeg training tiles (40x, 0.25 um/px), halved: 500 x 500, no types;
- consep/:  the 432 CoNSeP training crops (40x, 256 x 256), halved to 128 x 128 and laid out
            4 x 4 per source tile (the 16 crops of tile k, in name order) -> 27 mosaics of
            512 x 512, 4 types. The crops' positions in their tile are unknown, so the mosaics
            have straight seams; a 128-px crop alone would be mostly mirror padding in a
            256-px training window;
- dsb/:     the 105 DSB 2018 H&E tiles (CC0, resolution unknown; their median nucleus diameter,
            18.6 px, against MoNuSeg's 22.9 px at 0.25 um/px, puts them near 0.31 um/px),
            scaled by 0.62 and laid out 2 x 2 (4 consecutive ids per mosaic), no types.

Images are resampled with area averaging, labels with nearest neighbour (ids are never mixed).
Usage: python scripts/bundled_model/prepare_data.py ../shared/data OUT_DIR [MPP]
MPP (default 0.5): another target resolution, e.g. 0.25 for the 40x probe (MoNuSeg and CoNSeP
as they are, CoNSeP's mosaics 1024 x 1024, DSB enlarged); the names and layout are the same.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import tifffile

TARGET_MPP = 0.5
DSB_MPP = 0.25 * 22.9 / 18.6  # from the median nucleus diameters in the data READMEs


def resize_image(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    size = (round(w * scale), round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, size, interpolation=interp)


def resize_labels(lab: np.ndarray, scale: float) -> np.ndarray:
    h, w = lab.shape
    rows = np.minimum(((np.arange(round(h * scale)) + 0.5) / scale).astype(int), h - 1)
    cols = np.minimum(((np.arange(round(w * scale)) + 0.5) / scale).astype(int), w - 1)
    return lab[rows][:, cols]


def read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write(out: Path, name: str, img: np.ndarray, inst: np.ndarray, typ: np.ndarray | None):
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "images" / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    # relabel 1..N so that ids stay dense after nearest-neighbour resampling
    ids = np.unique(inst)
    ids = ids[ids > 0]
    lut = np.zeros(int(inst.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    tifffile.imwrite(out / "labels" / f"{name}_inst.tif", lut[inst].astype(np.uint16),
                     compression="zlib")  # fmt: skip
    if typ is not None:
        tifffile.imwrite(out / "labels" / f"{name}_type.tif", typ.astype(np.uint8),
                         compression="zlib")  # fmt: skip


def mosaic(pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], cols: int):
    """Lay out (image, inst, type) pieces row by row; instance ids offset so they stay unique."""
    rows = -(-len(pieces) // cols)
    ph = max(p[0].shape[0] for p in pieces)
    pw = max(p[0].shape[1] for p in pieces)
    img = np.full((rows * ph, cols * pw, 3), 255, np.uint8)
    inst = np.zeros((rows * ph, cols * pw), np.int32)
    typed = pieces[0][2] is not None
    typ = np.zeros_like(inst, np.uint8) if typed else None
    offset = 0
    for k, (im, ins, ty) in enumerate(pieces):
        r, c = divmod(k, cols)
        h, w = ins.shape
        sl = (slice(r * ph, r * ph + h), slice(c * pw, c * pw + w))
        img[sl] = im
        inst[sl] = np.where(ins > 0, ins.astype(np.int32) + offset, 0)
        if typed:
            typ[sl] = ty
        offset += int(ins.max())
    # crop away empty rows/cols of an incomplete last row
    return img, inst, typ


def main(shared: Path, out: Path, target_mpp: float = TARGET_MPP) -> None:
    scale = 0.25 / target_mpp
    mon = shared / "monuseg"
    for name in json.loads((mon / "split.json").read_text())["train"]:
        img = resize_image(read_image(mon / "images" / f"{name}.png"), scale)
        inst = resize_labels(tifffile.imread(mon / "labels" / f"{name}_inst.tif"), scale)
        write(out / "monuseg", name, img, inst, None)

    con = shared / "consep_train_patches"
    names = json.loads((con / "split.json").read_text())["train"]
    tiles: dict[str, list[str]] = {}
    for name in names:
        tiles.setdefault(name.rsplit("_", 1)[0], []).append(name)
    for tile, crops in sorted(tiles.items()):
        pieces = []
        for name in sorted(crops):
            img = resize_image(read_image(con / "images" / f"{name}.jpg"), scale)
            inst = resize_labels(tifffile.imread(con / "labels" / f"{name}_inst.tif"), scale)
            typ = resize_labels(tifffile.imread(con / "labels" / f"{name}_type.tif"), scale)
            pieces.append((img, inst, typ))
        write(out / "consep", tile, *mosaic(pieces, 4))
    (out / "consep" / "type_info.json").write_text(
        json.dumps(
            {
                "0": ["background", [0, 0, 0]],
                "1": ["other", [255, 165, 0]],
                "2": ["inflammatory", [255, 0, 0]],
                "3": ["epithelial", [0, 200, 0]],
                "4": ["spindle-shaped", [0, 0, 255]],
            }
        )
    )

    dsb = shared / "dsb2018_he"
    ids = sorted(json.loads((dsb / "split.json").read_text())["train"])
    dscale = DSB_MPP / target_mpp
    for k in range(0, len(ids), 4):
        pieces = []
        for name in ids[k : k + 4]:
            img = resize_image(read_image(dsb / "images" / f"{name}.png"), dscale)
            inst = resize_labels(tifffile.imread(dsb / "labels" / f"{name}_inst.tif"), dscale)
            pieces.append((img, inst, None))
        if len(pieces) < 4:  # the last group: lay out what is left in one row
            write(out / "dsb", f"dsb_{k // 4:03d}", *mosaic(pieces, len(pieces)))
        else:
            write(out / "dsb", f"dsb_{k // 4:03d}", *mosaic(pieces, 2))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), *map(float, sys.argv[3:]))
