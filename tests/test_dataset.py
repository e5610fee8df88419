"""PatchDataset, class-balanced sampler and `hovernet view-dataset` on real CoNSeP patches."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from skimage.measure import label
from support.patchdata import make_patch_folder, mosaic_patch, save_original_npy

from hovernet.cli import main
from hovernet.data.dataset import (
    PatchDataset,
    class_balanced_sampler,
    class_balanced_weights,
    load_patch,
    patch_class_counts,
)
from hovernet.data.preview import GAP, HEADER, grid_shape
from hovernet.data.targets import crop_center, hv_targets, min_size_for_mpp
from hovernet.errors import HoverNetError

# mosaic patches of real CoNSeP crops; in these, class 1 ("other") is rare (5 of ~1900 nuclei)
TRAIN = [0, 1, 4, 5, 6, 7]
N_TRAIN = len(TRAIN)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_patch_folder(tmp_path_factory.mktemp("patches"), train=TRAIN, valid=[3])


def cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code
    return 0


def test_validation_sample_is_centre_crop_with_targets(folder):
    ds = PatchDataset.from_folder(folder, "valid", geometry="original", augment=False)
    assert len(ds) == 1 and ds.with_type
    item = ds[0]
    img, labels = load_patch(folder / "valid/mosaic_003.npz")
    hv, np_map = hv_targets(crop_center(labels[..., 0], (270, 270)), (80, 80))
    assert item["img"].dtype == torch.uint8 and item["img"].shape == (3, 270, 270)
    np.testing.assert_array_equal(item["img"].permute(1, 2, 0).numpy(), img[135:405, 135:405])
    np.testing.assert_array_equal(item["hv_map"].permute(1, 2, 0).numpy(), hv)
    np.testing.assert_array_equal(item["np_map"].numpy(), np_map)
    np.testing.assert_array_equal(item["tp_map"].numpy(), labels[230:310, 230:310, 1])
    assert item["np_map"].dtype == item["tp_map"].dtype == torch.int64
    assert int(item["tp_map"].max()) >= 2


def test_hv_min_size_is_the_same_area_at_every_resolution(folder):
    assert [min_size_for_mpp(m) for m in (None, 0.25, 0.5, 1.0)] == [30, 30, 8, 2]
    with pytest.raises(HoverNetError, match="positive number of microns"):
        min_size_for_mpp(0)
    ds = PatchDataset.from_folder(folder, "valid", geometry="original", augment=False)
    _, labels = load_patch(folder / "valid/mosaic_003.npz")
    inst = crop_center(labels[..., 0], (270, 270))
    default = ds[0]["hv_map"].permute(1, 2, 0).numpy()
    ds.hv_min_size = 8
    small = ds[0]["hv_map"].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(small, hv_targets(inst, (80, 80), min_size=8)[0])
    # nuclei (4-connected pieces) of 8-29 px in the crop gain a centre; nothing else changes
    pieces = crop_center(label(inst, background=0, connectivity=1), (80, 80))
    areas = np.bincount(pieces.ravel())
    gained = (pieces > 0) & np.isin(pieces, np.flatnonzero((areas >= 8) & (areas < 30)))
    assert gained.any() and np.abs(small[gained]).max() > 0 and not default[gained].any()
    np.testing.assert_array_equal(small[~gained], default[~gained])


def test_augmented_sample_targets_follow_augmented_labels(folder):
    ds = PatchDataset.from_folder(folder, "train", geometry="fast", seed=3)
    s = ds.sample_arrays(1)
    assert s["img"].shape == (256, 256, 3) and s["hv_map"].shape == (164, 164, 2)
    # the targets are consistent with each other: HV only on nuclei, types only on nuclei
    assert np.all(s["hv_map"][s["np_map"] == 0] == 0)
    assert np.all((s["tp_map"] > 0) == (s["np_map"] > 0))
    assert s["hv_map"].min() == -1 and s["hv_map"].max() == 1


def test_original_npy_patches_give_the_same_samples(folder, tmp_path):
    img, inst, typ = mosaic_patch(0)
    save_original_npy(tmp_path / "a.npy", img, inst, typ)
    npy = PatchDataset.from_folder(tmp_path, None, seed=11)
    npz = PatchDataset([folder / "train/mosaic_000.npz"], seed=11)
    a, b = npy[0], npz[0]
    assert a.keys() == b.keys() == {"img", "np_map", "hv_map", "tp_map"}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_samples_and_stream_advances(folder):
    a = PatchDataset.from_folder(folder, seed=5)
    b = PatchDataset.from_folder(folder, seed=5)
    first, again = a[2], b[2]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["img"], a[2]["img"])  # next draw differs


def test_dataloader_workers_reproducible_and_independent(folder):
    files = [folder / "train/mosaic_000.npz"] * 4  # the same patch four times

    def run():
        ds = PatchDataset(files, seed=1)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(0)
        )
        return [batch["img"] for batch in loader]

    first, second = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    # items 0 and 1 go to workers 0 and 1: same patch, same position in stream, other draws
    assert not torch.equal(first[0], first[1])
    assert len({x.numpy().tobytes() for x in first}) == 4


def test_class_counts_from_manifest_match_the_patches(folder, tmp_path):
    ds = PatchDataset.from_folder(folder, "train")
    from_manifest = patch_class_counts(ds)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "manifest.csv").unlink()
    counted = patch_class_counts(PatchDataset.from_folder(copy, "train"))
    np.testing.assert_array_equal(from_manifest, counted)
    assert from_manifest.shape == (N_TRAIN, 5)


def test_balanced_sampler_draws_rare_class_more_often(folder):
    ds = PatchDataset.from_folder(folder, "train")
    counts = patch_class_counts(ds)
    totals = counts[:, 1:].sum(axis=0)
    rare = int(np.argmin(totals)) + 1
    assert totals[rare - 1] < 0.01 * totals.sum()  # really rare in this data
    weights = class_balanced_weights(counts)
    assert weights.sum() == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    drawn = np.array(list(class_balanced_sampler(ds, num_samples=6000, generator=generator)))
    # rare nuclei seen per draw, and draws that contain the rare class, against uniform draws
    per_draw, per_draw_uniform = counts[drawn, rare].mean(), counts[:, rare].mean()
    with_rare, with_rare_uniform = (counts[drawn, rare] > 0).mean(), (counts[:, rare] > 0).mean()
    assert per_draw > 1.25 * per_draw_uniform
    assert with_rare > 1.25 * with_rare_uniform
    assert per_draw == pytest.approx(np.sum(weights * counts[:, rare]), rel=0.1)
    empty = class_balanced_weights(np.array([[0, 0, 0], [0, 10, 0], [0, 10, 1]]))
    assert empty[0] > 0 and empty[2] > empty[1]  # background patch still drawn; rare wins


def test_untyped_folder_and_sampler_error(tmp_path):
    folder = make_patch_folder(tmp_path / "untyped", train=[0], valid=[], typed=False)
    ds = PatchDataset.from_folder(folder)
    assert "tp_map" not in ds[0] and not ds.with_type
    with pytest.raises(HoverNetError, match="type labels"):
        class_balanced_sampler(ds)


def test_missing_empty_and_bad_patches_give_clear_errors(tmp_path):
    with pytest.raises(HoverNetError, match="does not exist"):
        PatchDataset.from_folder(tmp_path / "nope")
    with pytest.raises(HoverNetError, match="no patches found"):
        PatchDataset.from_folder(tmp_path)
    np.save(tmp_path / "bad.npy", np.zeros((10, 10, 2), np.int32))
    with pytest.raises(HoverNetError, match="bad.npy"):
        PatchDataset.from_folder(tmp_path, None)


def test_view_dataset_writes_grid(folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli(["view-dataset", str(folder), "--n", "3", "--out", str(out), "--seed", "4"]) == 0
    grid = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert grid.shape[:2] == grid_shape(3, 270, typed=True)
    # row 1, first panel: the augmented image the dataset gives for the same seed and order
    ds = PatchDataset.from_folder(folder, seed=4)
    samples = [ds.sample_arrays(i) for i in range(3)]
    y, x = HEADER + 270 + GAP, GAP
    panel = grid[y : y + 270, x : x + 270]
    np.testing.assert_array_equal(panel[180:], samples[1]["img"][180:])  # below the outline
    # NP panel: white exactly where the (enlarged) nucleus map is 1
    np_panel = grid[y : y + 270, x + 270 + GAP : x + 2 * 270 + GAP, 0]
    expected = cv2.resize(samples[1]["np_map"] * 255, (270, 270), interpolation=0)
    np.testing.assert_array_equal(np_panel, expected)
    assert list(tmp_path.iterdir()) == [out]  # nothing half-written left behind
    # --mpp 0.5: small nuclei get HV targets as a 20x training run gives them; only the two HV
    # panels change
    at_20x = tmp_path / "grid20x.png"
    args = ["view-dataset", str(folder), "--n", "3", "--seed", "4", "--mpp", "0.5"]
    assert cli([*args, "--out", str(at_20x)]) == 0
    changed = np.any(cv2.imread(str(at_20x)) != cv2.imread(str(out)), axis=(0, 2))
    hv_x = x + 2 * (270 + GAP)
    assert changed[hv_x : hv_x + 2 * 270 + GAP].any()
    assert not changed[: hv_x - GAP].any() and not changed[hv_x + 2 * 270 + GAP :].any()


def test_view_dataset_fast_mode_and_errors(folder, tmp_path, capsys):
    out = tmp_path / "fast.png"
    assert cli(["view-dataset", str(folder), "--n", "2", "--out", str(out), "--mode", "fast"]) == 0
    assert cv2.imread(str(out)).shape[:2] == grid_shape(2, 256, typed=True)
    for args, message in [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(tmp_path / "empty")], "no patches found"),
    ]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert cli(["view-dataset", *args, "--out", str(tmp_path / "x.png")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
