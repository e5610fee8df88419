"""`hovernet extract-patches` end to end on real data, resuming and bad input."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import DATA

from hovernet.cli import main
from hovernet.data.patches import WindowSpec, window_grid
from hovernet.io.slides import read_rgb

SEED = DATA / "seed_format"
TYPE_INFO = SEED / "type_info.json"


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def manifest(out: Path) -> list[dict]:
    with open(out / "manifest.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def seed_crops(tmp_path_factory) -> Path:
    """Three 600 x 700 crops of the seed slides with their colour masks (PNG)."""
    folder = tmp_path_factory.mktemp("crops")
    for name, slide, (y, x) in [
        ("a1", "a", (0, 0)),
        ("a2", "a", (1500, 900)),
        ("b1", "b", (700, 0)),
    ]:
        img = read_rgb(SEED / f"slide_{slide}.tif")[y : y + 600, x : x + 700]
        mask = read_rgb(SEED / f"slide_{slide}_mask.png")[y : y + 600, x : x + 700]
        cv2.imwrite(str(folder / f"{name}.png"), img[:, :, ::-1])
        cv2.imwrite(str(folder / f"{name}_mask.png"), mask[:, :, ::-1])
    return folder


def extract(images: Path, out: Path, *extra: str) -> int:
    return run(
        ["extract-patches", "--images", str(images), "--annotations", str(images),
         "--type-info", str(TYPE_INFO), "--out", str(out), "--min-size", "0", *extra]
    )  # fmt: skip


def test_colour_masks_to_dataset_folder(seed_crops, tmp_path, capsys):
    out = tmp_path / "ds"
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a1", "a2"], "valid": ["b1"]}))
    assert extract(seed_crops, out, "--split-file", str(split)) == 0
    rows = manifest(out)
    per_image = len(window_grid(600, 700, WindowSpec(540, 164)))
    assert len(rows) == 3 * per_image
    assert list(rows[0]) == ["split", "path", "source", "y", "x", "size", "n_nuclei"] + [
        "n_type_1",
        "n_type_2",
    ]
    assert {r["source"] for r in rows if r["split"] == "valid"} == {"b1"}
    assert json.loads((out / "type_info.json").read_text()) == json.loads(TYPE_INFO.read_text())
    image = read_rgb(seed_crops / "a1.png")
    mask = read_rgb(seed_crops / "a1_mask.png")
    for row in rows[:: max(1, len(rows) // 6)]:
        patch = np.load(out / row["path"])
        img, inst, typ = patch["img"], patch["inst"], patch["type"]
        assert img.dtype == np.uint8 and img.shape == (540, 540, 3) and typ.dtype == np.uint8
        assert inst.dtype == (np.uint8 if inst.max() < 256 else np.uint16)
        assert sorted(np.unique(inst)) == list(range(inst.max() + 1))  # ids 1..N
        assert int(row["n_nuclei"]) == inst.max()
        for k in (1, 2):  # per-class counts = instances of that class in the stored patch
            assert int(row[f"n_type_{k}"]) == len(np.unique(inst[typ == k]))
        if row["source"] == "a1":  # the part inside the image is the image
            y, x = int(row["y"]), int(row["x"])
            y0, x0 = max(y, 0), max(x, 0)
            y1, x1 = min(y + 540, 600), min(x + 540, 700)
            sub = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
            assert (img[sub] == image[y0:y1, x0:x1]).all()
            red = (mask[y0:y1, x0:x1] == (255, 0, 0)).all(axis=2)
            assert ((typ[sub] == 2) == red).all()
    counts = json.loads((out / "class_counts.json").read_text())
    assert counts["splits"]["valid"]["images"] == 1
    assert counts["splits"]["train"]["patches"] == 2 * per_image
    train_red = counts["splits"]["train"]["patch_instances"]["inflammatory"]
    assert train_red == sum(int(r["n_type_2"]) for r in rows if r["split"] == "train")
    assert "inflammatory" in capsys.readouterr().err  # the rich table


def test_rerun_skips_finished_sources_and_refuses_other_settings(seed_crops, tmp_path, capsys):
    out = tmp_path / "ds"
    assert extract(seed_crops, out, "--valid-fraction", "0.34") == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    capsys.readouterr()
    assert extract(seed_crops, out, "--valid-fraction", "0.34") == 0
    assert capsys.readouterr().err.count("skip (done)") == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == first
    # an interrupted source (no done marker) is extracted again
    (out / ".done" / "a2.json").unlink()
    assert extract(seed_crops, out, "--valid-fraction", "0.34") == 0
    assert capsys.readouterr().err.count("skip (done)") == 2
    assert extract(seed_crops, out, "--step", "200") == 2
    assert "other settings (step)" in capsys.readouterr().err


def test_untyped_instance_maps_small_images_pad(tmp_path):
    """DSB tiles (256 x 320) are smaller than a window: mirror-padded, not a crash."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    names = sorted(p.stem for p in (DATA / "dsb2018_he/images").iterdir())[:3]
    for n in names:
        os.symlink(DATA / "dsb2018_he/images" / f"{n}.png", images / f"{n}.png")
        os.symlink(DATA / "dsb2018_he/labels" / f"{n}_inst.tif", labels / f"{n}_inst.tif")
    out = tmp_path / "ds"
    assert run(["extract-patches", "--images", str(images), "--ann_dir", str(labels),
                "--out", str(out), "--valid-fraction", "0"]) == 0  # fmt: skip
    rows = manifest(out)
    assert len(rows) == 3 * 4 and "n_type_1" not in rows[0]
    assert not (out / "type_info.json").exists()
    first = rows[0]
    patch = np.load(out / first["path"])
    assert "type" not in patch.files
    ref = tifffile.imread(DATA / "dsb2018_he/labels" / f"{first['source']}_inst.tif")
    inner = patch["inst"][188 : 188 + 256, 188 : 188 + 320]  # window 0 starts at -188
    assert ((inner > 0) == (ref > 0)).all()
    counts = json.loads((out / "class_counts.json").read_text())["splits"]["train"]
    assert counts["instances"]["nucleus"] == sum(
        int(tifffile.imread(DATA / "dsb2018_he/labels" / f"{n}_inst.tif").max()) for n in names
    )


def test_original_patches_are_converted(tmp_path):
    inst = tifffile.imread(DATA / "consep_patches/labels/test_10_002_inst.tif").astype(np.int32)
    typ = tifffile.imread(DATA / "consep_patches/labels/test_10_002_type.tif").astype(np.int32)
    img = read_rgb(DATA / "consep_patches/images/test_10_002.png").astype(np.int32)
    (tmp_path / "npy").mkdir()
    arr = np.concatenate([img, inst[..., None] * 2, typ[..., None]], axis=-1)
    np.save(tmp_path / "npy" / "p0.npy", arr)
    out = tmp_path / "ds"
    assert run(["extract-patches", "--format", "patch", "--annotations", str(tmp_path / "npy"),
                "--out", str(out), "--valid-fraction", "0"]) == 0  # fmt: skip
    patch = np.load(out / "train" / "p0.npz")
    assert (patch["inst"] == inst).all() and (patch["type"] == typ).all()
    assert (patch["img"] == img).all()
    mb = (out / "train" / "p0.npz").stat().st_size / 1e6
    assert mb < arr.nbytes / 1e6 / 3  # compact against the original's int32 .npy


def _bad_pair(folder: Path, image: bytes | np.ndarray, mask: np.ndarray) -> None:
    folder.mkdir()
    if isinstance(image, bytes):
        (folder / "s.png").write_bytes(image)
    else:
        cv2.imwrite(str(folder / "s.png"), image)
    cv2.imwrite(str(folder / "s_mask.png"), mask[:, :, ::-1])


@pytest.mark.parametrize(
    "case,needle",
    [
        ("unreadable", "s.png: cannot decode"),
        ("size", "s_mask.png: mask is 90 x 80 px but its image is 100 x 80 px"),
        ("colours", "s_mask.png: mask colours not in type_info: (0, 0, 255): 25 px"),
    ],
)
def test_bad_input_one_clear_error_and_no_output(tmp_path, capsys, case, needle):
    mask = np.zeros((80, 100, 3), np.uint8)
    image: bytes | np.ndarray = np.full((80, 100, 3), (200, 170, 210), np.uint8)
    if case == "unreadable":
        image = b"\x89PNG broken"
    elif case == "size":
        mask = mask[:, :90]
    else:
        mask[5:10, 5:10] = (0, 0, 255)
    _bad_pair(tmp_path / "in", image, mask)
    out = tmp_path / "ds"
    assert extract(tmp_path / "in", out, "--valid-fraction", "0") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in err
    assert not list(out.rglob("*.npz")) and not (out / "manifest.csv").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and p.name != "extract_config.json"]


def test_empty_mask_warns_and_still_extracts(tmp_path, capsys):
    _bad_pair(
        tmp_path / "in",
        np.full((80, 100, 3), (200, 170, 210), np.uint8),
        np.zeros((80, 100, 3), np.uint8),
    )
    out = tmp_path / "ds"
    with pytest.warns(UserWarning, match="s_mask.png: the mask has no nucleus pixels"):
        assert extract(tmp_path / "in", out, "--valid-fraction", "0") == 0
    rows = manifest(out)
    assert len(rows) == 1 and rows[0]["n_nuclei"] == "0"


def test_missing_annotation_is_named(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "lonely.png"), np.zeros((8, 8, 3), np.uint8))
    assert extract(tmp_path / "in", tmp_path / "ds") == 2
    assert "lonely.png: no annotation" in capsys.readouterr().err
