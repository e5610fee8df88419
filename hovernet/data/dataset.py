"""Torch dataset over a patch folder, with augmentation, targets and a class-balanced sampler.

Reads the folder written by ``hovernet extract-patches`` (``<dir>/<split>/*.npz`` holding
``img``, ``inst`` and optionally ``type``, plus ``<dir>/manifest.csv``) and the original
project's patches (``*.npy``, H x W x 5: RGB, instance, type; or H x W x 4 without types).

Each sample is a dict of tensors for a network of the given geometry (input S, output s):

- ``img``: uint8, 3 x S x S, RGB 0..255 (cast with ``.float()``; the network divides by 255)
- ``np_map``: int64, s x s, 1 on nuclei
- ``hv_map``: float32, 2 x s x s, channel 0 horizontal (x), channel 1 vertical (y)
- ``tp_map``: int64, s x s, type ids (only for typed data; for untyped patches when
  ``untyped_fill`` is set, filled with that value, e.g. -1 = "no type label" for the loss)
- ``inst_valid``: uint8 scalar, 0 for a point patch (its NP and HV targets are empty and mean
  nothing: the losses skip them), 1 otherwise; present when ``inst_flag`` is set (datasets
  with point patches, and every dataset trained beside one, so that batches collate)

Point patches (``points`` in the .npz, from ``--format points``): ``inst`` holds small disks
around labelled nucleus centres; their ``tp_map`` is the disk's class on disk pixels and
``POINT_IGNORE`` (-1) everywhere else, since unmarked pixels are not known to be background.

Randomness: each process draws from its own ``numpy.random.Generator``. In the main process it
is seeded with ``seed``; in a DataLoader worker with ``(seed, torch worker seed)``, so workers
get different streams, every epoch gets new draws, and a run is reproducible when torch is
seeded (``torch.manual_seed`` or the DataLoader's ``generator``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from hovernet.config import ModelGeometry, geometry_for
from hovernet.data.augment import AugmentConfig, augment_sample
from hovernet.data.targets import MIN_SIZE, crop_center, hv_targets
from hovernet.errors import HoverNetError
from hovernet.io.type_info import TypeInfo, load_type_info

PATCH_SUFFIXES = (".npz", ".npy")
POINT_IGNORE = -1  # type target of pixels without a label (= hovernet.train.losses.IGNORE)
MANIFEST = "manifest.csv"


def find_patches(dataset_dir: str | Path, split: str | None = "train") -> list[Path]:
    """Patch files of one split: ``<dir>/<split>/*.npz|*.npy``, else ``<dir>/*.npz|*.npy``.

    With a manifest, its rows of that split give the files (in manifest order).
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise HoverNetError(
            f"dataset folder {root} does not exist: pass the folder written by "
            "`hovernet extract-patches` (or a folder of the original's .npy patches)"
        )
    manifest = root / MANIFEST
    if manifest.is_file() and split is not None:
        rows = [r for r in read_manifest(root) if r["split"] == split]
        files = [root / r["path"] for r in rows]
    else:
        folder = root / split if split is not None and (root / split).is_dir() else root
        files = sorted(p for p in folder.iterdir() if p.suffix in PATCH_SUFFIXES)
    if not files:
        raise HoverNetError(
            f"no patches found in {root} (split {split!r}): expected {root}/{split}/*.npz from "
            "`hovernet extract-patches`, or .npy patches of the original project"
        )
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise HoverNetError(
            f"{len(missing)} patch file(s) listed in {manifest} are missing, e.g. {missing[0]}: "
            "re-run `hovernet extract-patches`"
        )
    return files


def read_manifest(dataset_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``<dir>/manifest.csv`` as dicts (strings), or [] when there is none."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"split", "path"} <= set(rows[0]):
        raise HoverNetError(f"{path} lacks the columns 'split' and 'path': re-run extract-patches")
    return rows


def load_patch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One patch file -> (H x W x 3 uint8 image, H x W x K int32 labels: instance[, type])."""
    img, labels, _ = load_patch_flagged(path)
    return img, labels


def load_patch_flagged(path: str | Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """`load_patch` and whether the patch is a point patch (type targets only)."""
    path = Path(path)
    points = False
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                img = data["img"]
                maps = [data["inst"]] + ([data["type"]] if "type" in data.files else [])
                points = "points" in data.files
            labels = np.stack(maps, axis=-1)
        else:
            data = np.load(path)
            if data.ndim != 3 or data.shape[-1] not in (4, 5):
                raise HoverNetError(
                    f"{path}: expected an H x W x 5 (RGB, instance, type) or H x W x 4 array as "
                    f"the original's patches, got shape {data.shape}"
                )
            img, labels = data[..., :3], data[..., 3:]
    except (OSError, ValueError, KeyError) as exc:
        raise HoverNetError(
            f"cannot read patch {path} ({exc}): expected an .npz with 'img' and 'inst' "
            "(and 'type') arrays or the original's .npy; re-run `hovernet extract-patches`"
        ) from exc
    if img.ndim != 3 or img.shape[-1] != 3 or img.shape[:2] != labels.shape[:2]:
        raise HoverNetError(
            f"{path}: image {img.shape} and labels {labels.shape[:2]} must be H x W x 3 and H x W"
        )
    img = np.ascontiguousarray(img, dtype=np.uint8)
    return img, np.ascontiguousarray(labels, dtype=np.int32), points


class PatchDataset(Dataset):
    """Augmented training samples (or centre-cropped validation samples) from patch files."""

    def __init__(
        self,
        files: Sequence[str | Path],
        geometry: ModelGeometry | str = "original",
        augment: bool = True,
        seed: int | None = None,
        aug_config: AugmentConfig | None = None,
        manifest_rows: Sequence[dict[str, str]] | None = None,
    ) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise HoverNetError("no patch files given: pass a non-empty list or dataset folder")
        self.geometry = geometry_for(geometry) if isinstance(geometry, str) else geometry
        self.augment = augment
        self.seed = seed
        self.aug_config = aug_config or AugmentConfig()
        self.manifest_rows = list(manifest_rows) if manifest_rows else None
        self.with_type = load_patch(self.files[0])[1].shape[-1] > 1
        self.untyped_fill: int | None = None  # set by the trainer beside typed folders
        self.hv_min_size = MIN_SIZE  # set by the trainer from the model's resolution
        rows = self.manifest_rows
        self.inst_flag = bool(rows) and "points" in rows[0]  # see the module docstring
        self._rng: np.random.Generator | None = None
        self._rng_owner: int | None = None

    @classmethod
    def from_folder(
        cls, dataset_dir: str | Path, split: str | None = "train", **kwargs
    ) -> PatchDataset:
        files = find_patches(dataset_dir, split)
        rows = [r for r in read_manifest(dataset_dir) if r["split"] == split]
        return cls(files, manifest_rows=rows if len(rows) == len(files) else None, **kwargs)

    def __len__(self) -> int:
        return len(self.files)

    def rng(self) -> np.random.Generator:
        """This process's generator (created on first use in each DataLoader worker)."""
        info = torch.utils.data.get_worker_info()
        owner = -1 if info is None else info.id
        if self._rng is None or self._rng_owner != owner:
            base = [] if self.seed is None else [self.seed]
            if info is None:
                self._rng = np.random.default_rng(self.seed)
            else:
                self._rng = np.random.default_rng([*base, info.seed])
            self._rng_owner = owner
        return self._rng

    def sample_arrays(
        self, index: int, rng: np.random.Generator | None = None
    ) -> dict[str, np.ndarray]:
        """The sample as NumPy arrays (HWC image, HW maps, HW x 2 HV): for viewing and tests.

        `rng` replaces this process's generator for this one sample (the trainer passes one
        per sample, so a sample's augmentation does not depend on workers or on resuming).
        """
        img, labels, points = load_patch_flagged(self.files[index])
        if points and labels.shape[-1] < 2:
            raise HoverNetError(f"{self.files[index]}: a point patch without its type map")
        if self.with_type and labels.shape[-1] < 2:
            raise HoverNetError(f"{self.files[index]} has no type map but the first patch does")
        if self.augment:
            rng = rng if rng is not None else self.rng()
        else:
            rng = None
        size, out = self.geometry.input_size, self.geometry.output_size
        img, labels = augment_sample(img, labels, size, rng, self.aug_config)
        if points:  # no instance targets: empty maps, skipped by the losses (inst_valid 0)
            hv, np_map = np.zeros((out, out, 2), np.float32), np.zeros((out, out), np.uint8)
        else:
            hv, np_map = hv_targets(labels[..., 0], (out, out), min_size=self.hv_min_size)
        sample = {"img": img, "np_map": np_map, "hv_map": hv}
        if self.with_type:
            tp = crop_center(labels[..., 1], (out, out))
            if points:
                tp = np.where(crop_center(labels[..., 0], (out, out)) > 0, tp, POINT_IGNORE)
            sample["tp_map"] = np.ascontiguousarray(tp)
        elif self.untyped_fill is not None:
            sample["tp_map"] = np.full((out, out), self.untyped_fill, np.int64)
        if self.inst_flag or points:
            sample["inst_valid"] = np.array(0 if points else 1, np.uint8)
        return sample

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.tensors(self.sample_arrays(index))

    @staticmethod
    def tensors(s: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """A sample of NumPy arrays (`sample_arrays`) as the tensors `__getitem__` returns."""
        item = {
            "img": torch.from_numpy(s["img"]).permute(2, 0, 1).contiguous(),
            "np_map": torch.from_numpy(s["np_map"]).long(),
            "hv_map": torch.from_numpy(s["hv_map"]).permute(2, 0, 1).contiguous(),
        }
        if "tp_map" in s:
            item["tp_map"] = torch.from_numpy(s["tp_map"]).long()
        if "inst_valid" in s:
            item["inst_valid"] = torch.from_numpy(s["inst_valid"]).bool()
        return item


def instance_type_counts(labels: np.ndarray) -> dict[int, int]:
    """Number of instances per type id (>= 1) in an H x W x 2 (instance, type) label stack."""
    inst = labels[..., 0].ravel()
    typ = labels[..., 1].ravel()
    pairs = np.unique(np.stack([inst, typ])[:, inst > 0], axis=1)
    ids, counts = np.unique(pairs[1][pairs[1] > 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


def patch_class_counts(dataset: PatchDataset) -> np.ndarray:
    """N_patches x (max type id + 1) instance counts; column 0 is unused (background).

    From the manifest's ``n_type_<id>`` columns when present, else counted from the patches.
    """
    if not dataset.with_type:
        raise HoverNetError(
            "the class-balanced sampler needs type labels, but the patches have none: "
            "extract patches with a type map (or train without --balance-classes)"
        )
    rows = dataset.manifest_rows
    columns = sorted(int(k[7:]) for k in (rows[0] if rows else {}) if k.startswith("n_type_"))
    if rows and columns:
        counts = np.zeros((len(rows), max(columns) + 1), np.int64)
        for i, row in enumerate(rows):
            for c in columns:
                counts[i, c] = int(float(row[f"n_type_{c}"] or 0))
        return counts
    per_patch = [instance_type_counts(load_patch(f)[1]) for f in dataset.files]
    width = max((max(d) for d in per_patch if d), default=0) + 1
    counts = np.zeros((len(per_patch), width), np.int64)
    for i, d in enumerate(per_patch):
        for c, n in d.items():
            counts[i, c] = n
    return counts


def class_balanced_weights(counts: np.ndarray, uniform_share: float = 0.2) -> np.ndarray:
    """Sampling probability per patch that gives every class the same share of draws.

    Class-balanced part: pick a class uniformly, then one of its nuclei uniformly, and take that
    nucleus's patch, i.e. P(p) = mean over classes c of n_pc / N_c. A patch full of a rare class
    is drawn far more often than one full of a common class. ``uniform_share`` of the draws stay
    uniform over patches so that patches without nuclei (background) are still seen.

    Args:
        counts: N_patches x C instance counts per class (column 0, background, is ignored).
    Returns:
        N_patches probabilities summing to 1.
    """
    counts = np.asarray(counts, dtype=np.float64)[:, 1:]
    totals = counts.sum(axis=0)
    present = totals > 0
    n = counts.shape[0]
    if not present.any():
        return np.full(n, 1.0 / n)
    balanced = (counts[:, present] / totals[present]).mean(axis=1)
    return (1.0 - uniform_share) * balanced + uniform_share / n


def class_balanced_sampler(
    dataset: PatchDataset,
    num_samples: int | None = None,
    uniform_share: float = 0.2,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A WeightedRandomSampler that draws patches with rare classes more often."""
    weights = class_balanced_weights(patch_class_counts(dataset), uniform_share)
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=num_samples or len(dataset),
        replacement=True,
        generator=generator,
    )


def read_type_info(dataset_dir: str | Path) -> TypeInfo | None:
    """``<dir>/type_info.json`` as ``{id: (name, (r, g, b))}``, or None when absent."""
    path = Path(dataset_dir) / "type_info.json"
    return load_type_info(path) if path.is_file() else None
