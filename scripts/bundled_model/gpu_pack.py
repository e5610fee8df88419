"""The bundled model's training data, small enough to travel to an accelerator machine.

The device tool carries at most 64 MiB with the working tree, and the recipe's data (the
resampled MoNuSeg / CoNSeP / DSB folders and CRCHisto's training images) are about 62 MB as
PNG. Lossless WebP stores the same pixels in about 3/4 of the bytes, so:

    python scripts/bundled_model/gpu_pack.py pack WORK/resampled ../shared/data .gpu
    python scripts/bundled_model/gpu_pack.py unpack .gpu /tmp/data      # on the GPU machine

`pack` writes PACK/resampled/<set>/{images/*.webp, labels/*, type_info.json} and
PACK/crchisto/{images/*.webp, points/*.csv, split.json} (CRCHisto's training split only: the
validation and test images are never trained on); `unpack` writes the same layout back with
PNG images, pixel for pixel the originals (checked), as PACK_OUT/resampled and
PACK_OUT/shared/crchisto for extract.sh and extract_points.sh. See gpu_v3.sh.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

SETS = ("monuseg", "consep", "dsb")
LIMIT = 64 * 2**20  # what the device tool carries, the working tree included
WEBP_LOSSLESS = [cv2.IMWRITE_WEBP_QUALITY, 101]  # quality above 100: lossless


def _to_webp(src: Path, dst: Path) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    ok, data = cv2.imencode(".webp", image, WEBP_LOSSLESS)
    if not ok or not np.array_equal(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), image):
        sys.exit(f"{src}: lossless WebP did not give the same pixels back")
    dst.write_bytes(data.tobytes())


def _to_png(src: Path, dst: Path) -> None:
    image = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if image is None or not cv2.imwrite(str(dst), image):
        sys.exit(f"{src}: could not convert to {dst}")


def _convert_folder(src: Path, dst: Path, suffix: str, keep=lambda name: True) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    convert = _to_webp if suffix == ".webp" else _to_png
    for path in sorted(src.iterdir()):
        if keep(path.stem):
            convert(path, dst / (path.stem + suffix))


def _copy_sets(src_root: Path, dst_root: Path, suffix: str) -> None:
    """The resampled sets: images converted to `suffix`, labels and type_info copied."""
    for name in SETS:
        src, dst = src_root / name, dst_root / name
        _convert_folder(src / "images", dst / "images", suffix)
        shutil.copytree(src / "labels", dst / "labels", dirs_exist_ok=True)
        if (src / "type_info.json").is_file():
            shutil.copy(src / "type_info.json", dst / "type_info.json")


def pack(resampled: Path, shared: Path, out: Path) -> None:
    if out.exists():
        sys.exit(f"{out} exists: remove it or pack into a new folder")
    _copy_sets(resampled, out / "resampled", ".webp")
    crc, dst = shared / "crchisto", out / "crchisto"
    train = set(json.loads((crc / "split.json").read_text())["train"])
    _convert_folder(crc / "images", dst / "images", ".webp", keep=train.__contains__)
    (dst / "points").mkdir()
    for name in sorted(train):
        shutil.copy(crc / "points" / f"{name}.csv", dst / "points" / f"{name}.csv")
    (dst / "split.json").write_text(json.dumps({"train": sorted(train), "valid": []}))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        f"wrote {out}: {size / 2**20:.1f} MiB (the device tool carries {LIMIT / 2**20:.0f} MiB "
        "with the working tree)"
    )


def unpack(pack_dir: Path, out: Path) -> None:
    _copy_sets(pack_dir / "resampled", out / "resampled", ".png")
    src, dst = pack_dir / "crchisto", out / "shared" / "crchisto"
    _convert_folder(src / "images", dst / "images", ".png")
    shutil.copytree(src / "points", dst / "points", dirs_exist_ok=True)
    shutil.copy(src / "split.json", dst / "split.json")
    print(f"unpacked {pack_dir} into {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 4 and args[0] == "pack":
        pack(Path(args[1]), Path(args[2]), Path(args[3]))
    elif len(args) == 3 and args[0] == "unpack":
        unpack(Path(args[1]), Path(args[2]))
    else:
        sys.exit(__doc__)
