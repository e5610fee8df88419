"""Benchmark: augmented training samples per second on ONE core, targets included.

Run: .venv/bin/python benchmarks/bench_dataset.py [--samples N]

Patches: 540 x 540 .npz files (the extract-patches layout) built from real CoNSeP crops in a
temporary folder. Compared, in the same process and on the same patches:
- this project's PatchDataset (NumPy/OpenCV augmentation, one warp per array), per geometry;
- the same steps with albumentations 2.0.8 (Affine, CenterCrop, flips, RandomRotate90, OneOf
  blur/median/noise, HueSaturationValue, RandomBrightnessContrast) + the same loading/targets.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the test helper that builds real patch folders

from support.patchdata import make_patch_folder  # noqa: E402

from hovernet.data.dataset import PatchDataset, load_patch  # noqa: E402
from hovernet.data.targets import crop_center, hv_targets  # noqa: E402


def albumentations_pipeline(size: int):
    import albumentations as A

    return A.Compose(
        [
            A.Affine(
                scale={"x": (0.8, 1.2), "y": (0.8, 1.2)},
                translate_percent={"x": (-0.01, 0.01), "y": (-0.01, 0.01)},
                rotate=(-179, 179),
                shear=(-5, 5),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                keep_ratio=False,
                p=1.0,
            ),
            A.CenterCrop(size, size),
            A.HorizontalFlip(),
            A.VerticalFlip(),
            A.RandomRotate90(),
            A.OneOf(
                [
                    A.GaussianBlur(blur_limit=(1, 5)),
                    A.MedianBlur(blur_limit=(3, 5)),
                    A.GaussNoise(std_range=(0.0, 0.05)),
                ],
                p=1.0,
            ),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=20, val_shift_limit=0, p=1),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.25, p=1),
        ],
        seed=0,
    )


class AlbumentationsDataset(torch.utils.data.Dataset):
    def __init__(self, files, size: int, out: int):
        self.files, self.size, self.out = files, size, out
        self.aug = albumentations_pipeline(size)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        img, labels = load_patch(self.files[index])
        res = self.aug(image=img, mask=labels)
        hv, np_map = hv_targets(res["mask"][..., 0], (self.out, self.out))
        tp = crop_center(res["mask"][..., 1], (self.out, self.out))
        return {
            "img": torch.from_numpy(res["image"]).permute(2, 0, 1).contiguous(),
            "np_map": torch.from_numpy(np_map).long(),
            "hv_map": torch.from_numpy(hv).permute(2, 0, 1).contiguous(),
            "tp_map": torch.from_numpy(np.ascontiguousarray(tp)).long(),
        }


def rate(dataset, n: int) -> float:
    dataset[0]  # warm up
    t0 = time.perf_counter()
    for i in range(n):
        dataset[i % len(dataset)]
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_patch_folder(Path(tmp), train=[0, 1, 2, 3, 4, 5], valid=[])
        files = sorted((folder / "train").glob("*.npz"))
        rows = []
        for mode, size, out in [("original", 270, 80), ("fast", 256, 164)]:
            ours = rate(PatchDataset(files, mode, seed=0), args.samples)
            theirs = rate(AlbumentationsDataset(files, size, out), args.samples)
            plain = rate(PatchDataset(files, mode, augment=False), args.samples)
            rows.append((f"{mode} {size}->{out}", ours, theirs, plain))
    print(
        "| geometry | PatchDataset augmented (samples/s) | albumentations 2.0.8 (samples/s) |"
        " ours / albumentations | no augmentation (samples/s) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, ours, theirs, plain in rows:
        print(f"| {name} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x | {plain:.0f} |")
    print("\n1 thread (torch, OpenCV, OMP); 540 x 540 .npz patches; load + augment + targets.")


if __name__ == "__main__":
    main()
