"""Inputs an H&E model cannot read are refused, and a resolution is never silently assumed.

- `colour_problem`: real H&E passes (the palest crops in shared/data, the bundled samples),
  greyscale and practically colourless RGB are refused, blank glass passes;
- `infer tile`, `infer wsi` and `extract-patches` refuse a greyscale image with an error line
  naming it, exit 2, and write nothing (extract-patches not even with --overwrite);
- a tissue mask may be grey, palette, 1-bit or RGB: read without a warning;
- `sniff_format` names a file's real format from its first bytes, and the readers name it when
  a file's extension lies (a JPEG renamed .svs);
- `segment_image` warns without `input_mpp` (naming it and the model's resolution), not with it.
"""

from __future__ import annotations

import gzip
import io
import shutil
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import DATA, REPO, run_cli
from PIL import Image
from support.slide_helpers import ArraySlide
from test_input_mpp import MONUSEG, blob_net

from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.infer.predict import segment_image
from hovernet.infer.slide_setup import TissueSource
from hovernet.infer.slide_tissue import tissue_of
from hovernet.io.input_checks import colour_problem, format_mismatch, sniff_format
from hovernet.io.slides import read_mask_image, read_rgb
from hovernet.io.wsi import open_slide

CONSEP_TRAIN = DATA / "consep_train_patches" / "images"
PALEST = ["train_25_008.jpg", "train_25_009.jpg", "train_25_014.jpg", "train_25_015.jpg"]
SAMPLES = REPO / "hovernet" / "samples"


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return read_rgb(DATA / "consep_patches" / "images" / "test_10_000.png")  # 256 x 256


def grey_of(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# ------------------------------------------------------------------ the colour criterion
@pytest.mark.parametrize("name", PALEST + ["train_2_001.jpg"])  # fat (pale), and a dark crop
def test_pale_and_dark_real_h_and_e_pass(name):
    assert colour_problem(read_rgb(CONSEP_TRAIN / name)) is None


def test_bundled_samples_pass():
    assert colour_problem(read_rgb(SAMPLES / "dsb2018_00ae65c1.png")) is None
    with open_slide(SAMPLES / "CMU-1-Small-Region.svs") as slide:
        assert colour_problem(slide.thumbnail()[0]) is None


def test_greyscale_and_colourless_rgb_are_refused(he):
    grey = grey_of(he)
    rng = np.random.default_rng(0)
    tinted = np.clip(grey[:, :, None].astype(int) + rng.integers(-2, 3, he.shape), 0, 255)
    as_jpeg = cv2.imdecode(cv2.imencode(".jpg", np.dstack([grey] * 3))[1], cv2.IMREAD_COLOR)
    for image in (grey, grey[:, :, None], np.dstack([grey] * 3), tinted.astype(np.uint8), as_jpeg):
        problem = colour_problem(image)
        assert problem is not None and problem.startswith("greyscale image")
        assert "H&E-stained RGB" in problem


def test_nothing_to_judge_passes(he):
    assert colour_problem(np.full((300, 300, 3), 255, np.uint8)) is None  # blank glass
    assert colour_problem(np.zeros((300, 300, 3), np.uint8)) is None  # black
    specks = np.full((300, 300, 3), 255, np.uint8)
    specks[:5, :5] = 90  # 25 grey pixels: too few to call the image greyscale
    assert colour_problem(specks) is None


def test_large_images_are_judged_on_a_subsample(he):
    big = np.tile(he, (12, 12, 1))  # 3072 x 3072
    assert colour_problem(big) is None
    assert colour_problem(np.dstack([grey_of(big)] * 3)) is not None


@pytest.mark.slow
def test_no_real_image_in_shared_data_is_refused():
    names = ("*/images/*.png", "*/images/*.jpg", "*/raw/*/images/*.png", "*/raw/images/*/*.jpg")
    names += ("seed_format/*.tif",)
    files = sorted({f for pattern in names for f in DATA.glob(pattern)})
    files += sorted(DATA.glob("wsi/*.svs"))
    assert len(files) > 900
    refused = []
    for path in files:
        with open_slide(path, mpp=1.0) as slide:
            if colour_problem(slide.thumbnail()[0]) is not None:
                refused.append(path.name)
    assert refused == []


# ------------------------------------------------------------------ the three commands
@pytest.fixture()
def grey_png(tmp_path, he) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "grey.png"), grey_of(he))
    return folder / "grey.png"


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_infer_tile_refuses_a_greyscale_tile(grey_png, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(["infer", "tile", "--input_dir", str(grey_png.parent),
                            "--output_dir", str(out)])  # fmt: skip
    assert code == 2
    (line,) = error_lines(err)
    assert "grey.png: greyscale image" in line and "H&E" in line
    assert "converted to RGB" not in err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("mpp", ["0.5", "auto"])  # auto: refused before the estimate runs
def test_infer_wsi_refuses_a_greyscale_slide(grey_png, tmp_path, mpp):
    out = tmp_path / "out"
    code, _, err = run_cli(["infer", "wsi", "--input_dir", str(grey_png), "--output_dir",
                            str(out), "--slide_mpp", mpp])  # fmt: skip
    assert code == 2
    (line,) = error_lines(err)
    assert "grey.png: greyscale image" in line and "H&E" in line
    assert not out.exists() or not any(out.rglob("*"))


def test_extract_patches_refuses_a_greyscale_image_before_writing(grey_png, tmp_path, he):
    folder = grey_png.parent
    labels = DATA / "consep_patches" / "labels" / "test_10_000_inst.tif"
    cv2.imwrite(str(folder / "colour.png"), he[:, :, ::-1])
    shutil.copy(labels, folder / "colour_inst.tif")
    out = tmp_path / "dataset"
    args = ["extract-patches", "--images", str(folder), "--annotations", str(folder),
            "--out", str(out), "--window", "128", "--step", "128", "--quiet"]  # fmt: skip
    (folder / "grey.png").rename(tmp_path / "grey.png")
    assert run_cli(args)[0] == 0  # the colour image alone
    before = sorted(p.name for p in out.rglob("*"))
    (tmp_path / "grey.png").rename(folder / "grey.png")
    shutil.copy(labels, folder / "grey_inst.tif")
    code, _, err = run_cli([*args, "--overwrite"])
    assert code == 2
    (line,) = error_lines(err)
    assert "grey.png: greyscale image" in line and "H&E" in line
    assert sorted(p.name for p in out.rglob("*")) == before  # --overwrite deleted nothing
    code, _, err = run_cli([*args[:5], "--out", str(tmp_path / "new"), *args[7:]])
    assert code == 2 and "grey.png: greyscale image" in err
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ tissue masks
def test_masks_of_any_kind_are_read_without_a_warning(tmp_path, he):
    expected = np.zeros((64, 64), bool)
    expected[:, :32] = True
    masks = tmp_path / "masks"
    masks.mkdir()
    grey = Image.fromarray(np.where(expected, 255, 0).astype(np.uint8))
    kinds = {
        "grey": grey,
        "bits": grey.convert("1"),
        "palette": grey.convert("P"),
        "rgb": grey.convert("RGB"),
    }
    slide = ArraySlide(Path("s.svs"), he, 0.25)
    for kind, image in kinds.items():
        for old in masks.iterdir():
            old.unlink()
        image.save(masks / "s.png")
        assert read_mask_image(masks / "s.png").shape[:2] == (64, 64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning fails
            _, _, mask, mask_mpp = tissue_of(slide, "s", TissueSource(mask_dir=masks))
        assert np.array_equal(mask, expected), kind
        assert mask_mpp == pytest.approx(0.25 * 256 / 64)


def test_a_greyscale_slide_is_refused_whatever_the_tissue_source(he):
    slide = ArraySlide(Path("g.svs"), np.dstack([grey_of(he)] * 3), 0.25)
    for source in (TissueSource(), TissueSource(detect=False)):
        with pytest.raises(HoverNetError, match="g.svs: greyscale image"):
            tissue_of(slide, "g", source)


# ------------------------------------------------------------------ real formats
def _tiff_bytes(**kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((8, 8, 3), np.uint8), **kw)
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("slide.svs", b"x")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,name",
    [
        (cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "JPEG"),
        (cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "PNG"),
        (cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "BMP"),
        (_tiff_bytes(), "TIFF"),
        (_tiff_bytes(bigtiff=True), "TIFF"),
        (b"GIF89a\x01\x00\x01\x00", "GIF"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WebP"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\x00" * 128 + b"DICM", "DICOM"),
        (_zip_bytes(), "ZIP"),
        (gzip.compress(b"x"), "gzip"),
        (b"%PDF-1.7\n", "PDF"),
        (b"SQLite format 3\x00", "SQLite"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS pointer"),
        (b"\n  <!DOCTYPE html><html><body>Access denied</body></html>", "HTML"),
        (b'<?xml version="1.0"?><Annotations/>', "XML"),
        ("notes: résumé\n".encode(), "text"),
        (b"", "empty file"),
        (bytes(range(256)), None),
    ],
)
def test_sniff_format_names_the_real_format(data, name):
    assert sniff_format(data[:512]) == name


def test_text_cut_inside_a_character_is_still_text():
    cut = ("a" * 511 + "é").encode()[:512]  # the first 512 bytes end inside the "é"
    assert sniff_format(cut) == "text"


def test_a_jpeg_renamed_svs_is_named_as_a_jpeg(tmp_path, he):
    fake = tmp_path / "x.svs"
    fake.write_bytes(cv2.imencode(".jpg", he[:, :, ::-1])[1].tobytes())
    for read in (open_slide, read_rgb):
        with pytest.raises(HoverNetError) as info:
            read(fake)
        message = str(info.value)
        assert message.startswith(f"{fake}: this is a JPEG file, not a .svs file")
        assert "rename it to .jpg" in message and "hovernet infer tile" in message
    code, _, err = run_cli(["infer", "wsi", "--input_dir", str(fake), "--output_dir",
                            str(tmp_path / "out")])  # fmt: skip
    assert code == 2 and "this is a JPEG file, not a .svs file" in err
    assert "OpenSlide" not in err


def test_other_lies_name_the_format_and_the_fix(tmp_path):
    cases = {
        "lfs.tif": (b"version https://git-lfs.github.com/spec/v1\n", "git lfs pull"),
        "page.ndpi": (b"<html><body>login</body></html>", "download it again"),
        "packed.svs": (_zip_bytes(), "extract the image from the archive"),
        "tiff.png": (_tiff_bytes(), "rename it to .tif"),
        "text.png": (b"not a png at all", "this is a text file"),
    }
    for name, (data, fix) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(HoverNetError) as info:
            read_rgb(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: ") and fix in str(info.value)


def test_names_that_tell_the_truth_or_are_not_judged(tmp_path, he):
    jpeg = cv2.imencode(".jpg", he[:, :, ::-1])[1].tobytes()
    for name in ("a.jpg", "a.JPEG", "a.mrxs", "a.vms"):
        (tmp_path / name).write_bytes(jpeg)
        assert format_mismatch(tmp_path / name) is None
    (tmp_path / "b.png").write_bytes(jpeg)  # another plain format: decoded by its content
    assert np.array_equal(read_rgb(tmp_path / "b.png"), read_rgb(tmp_path / "a.jpg"))


# ------------------------------------------------------------------ resolution in the API
@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return read_rgb(MONUSEG)[:120, :120]


def test_segment_image_warns_without_input_mpp(crop):
    with pytest.warns(HoverNetWarning) as record:
        segment_image(blob_net(0.5), crop)
    (warning,) = [w for w in record if issubclass(w.category, HoverNetWarning)]
    message = str(warning.message)
    assert "no input_mpp given" in message and "the model's 0.5 um/px" in message
    assert "input_mpp=" in message and "0.25 for 40x" in message
    assert warning.filename == __file__  # points at the caller's line
    with pytest.warns(HoverNetWarning, match="proc_mpp's 1 um/px"):
        segment_image(blob_net(0.5), crop, proc_mpp=1.0)


def test_segment_image_is_quiet_when_the_resolution_is_given_or_unknown(crop):
    with warnings.catch_warnings():
        warnings.simplefilter("error", HoverNetWarning)
        segment_image(blob_net(0.5), crop, input_mpp=0.5)  # the model's, knowingly
        segment_image(blob_net(None), crop)  # nothing known to compare with


def test_segment_image_refuses_a_2d_array(crop):
    with pytest.raises(HoverNetError, match="H x W x 3 uint8 RGB"):
        segment_image(blob_net(0.5), grey_of(crop), input_mpp=0.5)


def test_readme_python_example_gives_the_resolution():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    (call,) = [line for line in lines if "hovernet.segment_image(" in line]
    assert "input_mpp=" in call
