"""Training data for a run: several extract-patches folders, one sample order per epoch.

- `load_training_data` opens the `train` and `valid` splits of every folder. Folders with type
  maps and folders without (MoNuSeg, DSB next to CoNSeP) train together: untyped patches get a
  type target of -1 everywhere, which the type loss ignores. Class names and colours come from
  the typed folders' `type_info.json` (they must agree). Folders of point annotations
  (`--format points`) train the type branch only; when every folder is one, a warning says
  that nothing trains the NP and HV branches.
- `validation_class_warning` names the classes that have no nucleus in the validation patches:
  their Dice and F1 would otherwise be silently missing from the validation figures.
- `EpochSampler` draws the order of one epoch from (seed, epoch) alone, with one augmentation
  seed per draw, and each process takes its share of every global batch. So an epoch's batches
  do not depend on the number of DataLoader workers, and a run resumed at step k of an epoch
  sees exactly the batches it would have seen.
"""

from __future__ import annotations

import warnings
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hovernet.config import ModelGeometry
from hovernet.data.augment import AugmentConfig
from hovernet.data.dataset import (
    PatchDataset,
    class_balanced_weights,
    patch_class_counts,
    read_manifest,
    read_type_info,
)
from hovernet.data.targets import min_size_for_mpp
from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.io.type_info import TypeInfo
from hovernet.train.losses import IGNORE
from hovernet.train.state import Dist


@dataclass
class TrainingData:
    train: list[PatchDataset]
    valid: list[PatchDataset]
    type_info: TypeInfo | None
    nr_types: int | None  # None: no folder has type labels


def _has_split(folder: Path, split: str) -> bool:
    rows = read_manifest(folder)
    if rows:
        return any(r["split"] == split for r in rows)
    sub = folder / split
    return sub.is_dir() and any(p.suffix in (".npz", ".npy") for p in sub.iterdir())


def load_training_data(
    folders: Sequence[Path],
    geometry: ModelGeometry,
    seed: int = 0,
    augment: bool = True,
    stain_jitter: float = 0.0,
    mpp: float | None = None,
) -> TrainingData:
    """The training and validation patches of `folders`, their HV targets made for patches at
    `mpp` um/px (`min_size_for_mpp`)."""
    if not folders:
        raise HoverNetError("no --data folder given: pass a folder written by extract-patches")
    train, valid = [], []
    infos: dict[Path, TypeInfo] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            where = "" if folder.is_absolute() else f" (in the current folder {Path.cwd()})"
            raise HoverNetError(
                f"--data {folder} does not exist{where}: pass a folder written by extract-patches"
            )
        if not _has_split(folder, "train"):
            raise HoverNetError(
                f"{folder} has no training patches (no 'train' split): run extract-patches "
                "with --valid-fraction below 1, or pass another folder"
            )
        kw = {"geometry": geometry, "seed": seed}
        aug = AugmentConfig(stain_jitter=stain_jitter)
        ds = PatchDataset.from_folder(folder, "train", augment=augment, aug_config=aug, **kw)
        train.append(ds)
        if _has_split(folder, "valid"):
            valid.append(
                PatchDataset.from_folder(folder, "valid", geometry=geometry, augment=False)
            )
        if ds.with_type:
            info = read_type_info(folder)
            if info is None:
                raise HoverNetError(
                    f"{folder} has type maps but no type_info.json: put the class names and "
                    "colours there in the original's format, e.g. "
                    '{"0": ["background", [0, 0, 0]], "1": ["tumour", [255, 0, 0]]}'
                )
            infos[folder] = info
    type_info = None
    if infos:
        (first, type_info), *rest = infos.items()
        for folder, info in rest:
            if info != type_info:
                raise HoverNetError(
                    f"{folder}/type_info.json differs from {first}/type_info.json: typed folders "
                    "trained together must use the same classes (re-extract with one type_info)"
                )
    if any(ds.inst_flag for ds in [*train, *valid]):  # point patches: every sample says
        for ds in [*train, *valid]:  # whether it has instance targets, so batches collate
            ds.inst_flag = True
        if all(_points_only(ds) for ds in train):
            warnings.warn(HoverNetWarning(POINTS_ONLY), stacklevel=2)
    for ds in [*train, *valid]:
        ds.hv_min_size = min_size_for_mpp(mpp)
    nr_types = None if type_info is None else max(type_info) + 1
    if nr_types is not None:
        for ds in [*train, *valid]:
            if not ds.with_type:
                ds.untyped_fill = IGNORE
    return TrainingData(train, valid, type_info, nr_types)


POINTS_ONLY = (
    "every --data folder holds point annotations only: they train the type branch, and "
    "nothing trains the NP and HV branches; add a folder with outlines, or start from a "
    "trained model (--init CHECKPOINT)"
)


def _points_only(ds: PatchDataset) -> bool:
    rows = ds.manifest_rows
    return bool(rows) and all(r.get("points") == "1" for r in rows)


def class_counts(datasets: Sequence[PatchDataset], limit: int | None = None) -> dict[int, int]:
    """Nuclei per type id in the first `limit` (None: all) patches of `datasets` taken in order,
    as validation takes them; untyped datasets count their patches toward `limit` but add no
    nuclei (their pixels carry no type)."""
    totals: dict[int, int] = {}
    left = None if limit is None else max(0, int(limit))
    for ds in datasets:
        if left == 0:
            break
        n = len(ds) if left is None else min(len(ds), left)
        if ds.with_type:
            counts = patch_class_counts(ds)[:n].sum(axis=0)
            for c in range(1, len(counts)):
                totals[c] = totals.get(c, 0) + int(counts[c])
        if left is not None:
            left -= n
    return totals


def absent_class_warning(
    type_info: TypeInfo, counts: dict[int, int], n_patches: int, where: str
) -> str | None:
    """One line naming the classes of `type_info` (background aside) with no nucleus in
    `counts` (`class_counts` of the validation patches), else None."""
    absent = [c for c in sorted(type_info) if c != 0 and counts.get(c, 0) == 0]
    if not absent:
        return None
    names = ", ".join(f"{c} ({type_info[c][0]})" for c in absent)
    one = len(absent) == 1
    what, its, it = ("class", "its", "it") if one else ("classes", "their", "them")
    return (
        f"{what} {names} {'has' if one else 'have'} no nucleus in the {n_patches} validation "
        f"patch(es) of {where}, so validation cannot score {it} ({its} valid_tp_dice_<id> and "
        f"F1 are missing, or 0 where the model predicts {it}); put images with {it} into the "
        "valid split (extract-patches --split-file, or a larger --valid-fraction)"
    )


def validation_class_warning(folders: Sequence[Path], limit: int | None = None) -> str | None:
    """`absent_class_warning` for the validation patches of `folders` (the first `limit`,
    as `--valid-patches` takes them), with the classes of the typed folders; None when there
    is nothing to say (no typed folder, no validation patch, every class present). Folders
    that cannot be read are left to `load_training_data` to report."""
    valid: list[PatchDataset] = []
    type_info: TypeInfo | None = None
    where = []
    for folder in map(Path, folders):
        if not folder.is_dir() or not _has_split(folder, "train"):
            continue
        if type_info is None and PatchDataset.from_folder(folder, "train").with_type:
            type_info = read_type_info(folder)
        if _has_split(folder, "valid"):
            valid.append(PatchDataset.from_folder(folder, "valid", augment=False))
            where.append(str(folder))
    if type_info is None:
        return None
    total = sum(len(ds) for ds in valid)
    n = total if limit is None else min(max(0, limit), total)
    if n == 0:  # no validation at all (or --valid-patches 0, asked for): not this warning
        return None
    return absent_class_warning(type_info, class_counts(valid, limit), n, ", ".join(where))


class SeededConcat(Dataset):
    """Several PatchDatasets as one; items are fetched by (flat index, augmentation seed)."""

    def __init__(self, datasets: Sequence[PatchDataset]) -> None:
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[PatchDataset, int]:
        k = bisect_right(self.offsets, index) - 1
        return self.datasets[k], index - self.offsets[k]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        ds, local = self.locate(int(index))
        rng = None if seed is None else np.random.default_rng(int(seed))
        return ds.tensors(ds.sample_arrays(local, rng))


def balanced_weights(datasets: Sequence[PatchDataset]) -> np.ndarray:
    """Class-balanced sampling probabilities over the patches of all datasets together."""
    counts = [patch_class_counts(d) if d.with_type else None for d in datasets]
    if all(c is None for c in counts):
        raise HoverNetError(
            "--balance-classes needs type labels, but no --data folder has type maps"
        )
    width = max(c.shape[1] for c in counts if c is not None)
    rows = []
    for d, c in zip(datasets, counts, strict=True):
        block = np.zeros((len(d), width), np.int64)
        if c is not None:
            block[:, : c.shape[1]] = c
        rows.append(block)
    return class_balanced_weights(np.concatenate(rows))


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) for this process's part of each global batch.

    An epoch is `steps` global batches of `batch * world` draws (`dist.world` processes): a
    permutation of the patches (the last incomplete batch dropped), or with `steps_per_epoch` /
    `weights` draws with replacement. Process `dist.rank` takes positions rank * batch ..
    (rank + 1) * batch - 1 of each.
    """

    def __init__(
        self,
        n: int,
        batch: int,
        seed: int = 0,
        dist: Dist = Dist(),
        steps_per_epoch: int | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self.rank, self.world = dist.rank, dist.world
        world = dist.world
        self.weights = weights
        global_batch = batch * world
        self.steps = steps_per_epoch or max(1, n // global_batch)
        self.replacement = steps_per_epoch is not None or weights is not None or n < global_batch
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def draws(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, seeds) of all global draws of `epoch`."""
        rng = np.random.default_rng([self.seed, epoch])
        total = self.steps * self.batch * self.world
        if self.replacement:
            index = rng.choice(self.n, total, replace=True, p=self.weights)
        else:
            index = rng.permutation(self.n)[:total]
        return index, rng.integers(0, 2**63 - 1, size=total)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        index, seeds = self.draws(self.epoch)
        gb = self.batch * self.world
        for step in range(self.start_step, self.steps):
            lo = step * gb + self.rank * self.batch
            for i in range(lo, lo + self.batch):
                yield int(index[i]), int(seeds[i])

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.batch
