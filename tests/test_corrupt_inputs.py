"""Issue 19, point 1: unreadable data is never silent.

Damaged copies of the real slides (cut short, blocks of tile data zeroed, empty files) are made
in a temporary folder. Every reader (slide mode's `open_slide` with each backend, tile mode's
`read_rgb`, extract-patches' `open_image`) must refuse them with one HoverNetError naming the
file, the part that could not be read and the fix, and the command line must end with one
`error:` line, exit status 2 and no exports for the damaged slide.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import DATA, run_cli

from hovernet.errors import HoverNetError
from hovernet.io.slides import open_image, read_rgb
from hovernet.io.wsi import open_slide

SLIDE_A = DATA / "seed_format" / "slide_a.tif"  # JPEG tiles 256 x 256, 3 levels, IFDs first
SLIDE_B = DATA / "seed_format" / "slide_b.tif"
MASK_A = DATA / "seed_format" / "slide_a_mask.png"
TYPE_INFO = DATA / "seed_format" / "type_info.json"
CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"  # Aperio, JPEG tiles, IFDs after the data
TCGA = DATA / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"  # Aperio, JPEG 2000 tiles, no MPP
FIX_SLIDE = "re-copy or re-export the slide"
FIX_IMAGE = "re-copy or re-export the image"
EXPORTS = (".geojson.gz", ".csv", ".json", ".summary.json", ".overlay.png")


def _chunks(path: Path, page: int = 0) -> tuple[np.ndarray, np.ndarray]:
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        return np.asarray(p.dataoffsets, np.int64), np.asarray(p.databytecounts, np.int64)


def _cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def _zeroed(src: Path, dst: Path, start: int, stop: int) -> Path:
    data = bytearray(src.read_bytes())
    data[start:stop] = bytes(stop - start)
    dst.write_bytes(bytes(data))
    return dst


def _tile_box(path: Path, index: int, page: int = 0) -> tuple[int, int, int, int]:
    """(x, y, w, h) of tile `index` of a tiled page."""
    with tifffile.TiffFile(path) as tif:
        p = tif.pages[page]
        th, tw = p.chunks[:2]
        per_row = -(-p.imagewidth // tw)
    return (index % per_row) * tw, (index // per_row) * th, tw, th


# name -> (path, needle in the message); refused when the file is opened
OPEN_CASES: dict[str, tuple[Path, str]] = {}
# name -> (path, level, tile index, needle); refused when the damaged tile is read
READ_CASES: dict[str, tuple[Path, int, int, str]] = {}


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    a_size = SLIDE_A.stat().st_size
    # slide_a cut in half: its level-0 tiles and the directories of levels 1 and 2 are gone
    OPEN_CASES["cut_half"] = (_cut(SLIDE_A, root / "cut_half.tif", a_size // 2), "directory")
    # cut inside the last level's tile data, after every directory: only tile offsets show it
    off, cnt = _chunks(SLIDE_A, 2)
    cut = int(off[0] + (off[-1] + cnt[-1] - off[0]) // 2)
    OPEN_CASES["cut_tiles"] = (_cut(SLIDE_A, root / "cut_tiles.tif", cut), "of pyramid level 2")
    # Aperio SVS keep their directories after the data: a cut copy has none left
    cmu_cut = _cut(CMU, root / "cut_cmu.svs", CMU.stat().st_size // 2)
    OPEN_CASES["cut_cmu"] = (cmu_cut, "no image directory")
    tcga_cut = _cut(TCGA, root / "cut_tcga.svs", TCGA.stat().st_size // 2)
    OPEN_CASES["cut_tcga"] = (tcga_cut, "no image directory")
    # a JPEG 2000 tiled TIFF (directory first) cut inside its tile data
    crop = tifffile.imread(SLIDE_A)[:512, :768]
    j2k = root / "j2k_src.tif"
    tifffile.imwrite(
        j2k, crop, tile=(256, 256), photometric="rgb", compression="jpeg2000",
        resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER",
    )  # fmt: skip
    off, cnt = _chunks(j2k)
    OPEN_CASES["cut_j2k"] = (_cut(j2k, root / "cut_j2k.tif", int(off[3])), "tile 3 of pyramid")
    for suffix in ("tif", "svs"):
        (root / f"empty.{suffix}").write_bytes(b"")
        OPEN_CASES[f"empty_{suffix}"] = (root / f"empty.{suffix}", "empty (0 bytes)")
    # a block zeroed from the middle of level-0 tile 20 to the middle of tile 22 of slide_a
    off, cnt = _chunks(SLIDE_A)
    start, stop = int(off[20] + cnt[20] // 2), int(off[22] + cnt[22] // 2)
    zeroed = _zeroed(SLIDE_A, root / "zeroed.tif", start, stop)
    READ_CASES["zeroed"] = (zeroed, 0, 21, "Not a JPEG file")
    # the same in level 1 (read for the regions, not for the thumbnail)
    off, cnt = _chunks(SLIDE_A, 1)
    start, stop = int(off[10] + cnt[10] // 2), int(off[12] + cnt[12] // 2)
    READ_CASES["zeroed_l1"] = (_zeroed(SLIDE_A, root / "zeroed_l1.tif", start, stop), 1, 11, "")
    # JPEG 2000 tiles: tile 4 of the tifffile-made TIFF, tile 126 of the real TCGA slide
    off, cnt = _chunks(j2k)
    j2k_zeroed = _zeroed(j2k, root / "zeroed_j2k.tif", int(off[4]), int(off[4] + cnt[4]))
    READ_CASES["zeroed_j2k"] = (j2k_zeroed, 0, 4, "J2K")
    off, cnt = _chunks(TCGA)
    tcga_zeroed = _zeroed(TCGA, root / "zeroed_tcga.svs", int(off[126]), int(off[126] + cnt[126]))
    READ_CASES["zeroed_tcga"] = (tcga_zeroed, 0, 126, "")
    return root


# ---------------------------------------------------------------------------------------------
# slide mode's reader


@pytest.mark.parametrize("backend", ["auto", "tifffile", "openslide"])
@pytest.mark.parametrize(
    "name", ["cut_half", "cut_tiles", "cut_cmu", "cut_tcga", "cut_j2k", "empty_tif", "empty_svs"]
)
def test_open_slide_refuses_a_damaged_file_when_opening(bad, name, backend):
    path, needle = OPEN_CASES[name]
    with pytest.raises(HoverNetError) as info:
        open_slide(path, mpp=0.5, backend=backend)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and needle in message and FIX_SLIDE in message


def test_cut_copy_messages_say_where_the_data_should_be(bad):
    path, _ = OPEN_CASES["cut_half"]
    with pytest.raises(HoverNetError) as info:
        open_slide(path)
    assert f"past the end of the {path.stat().st_size}-byte file" in str(info.value)
    path, _ = OPEN_CASES["cut_tiles"]
    with pytest.raises(HoverNetError) as info:
        open_slide(path, backend="tifffile")
    message = str(info.value)
    assert re.search(r": tile \d+ of pyramid level 2 \(512 x 896 px\) \(and \d+ more\)", message)
    assert f"but the file has only {path.stat().st_size} bytes" in message


@pytest.mark.parametrize(
    "name,backend",
    [
        ("zeroed", "auto"),  # OpenSlide
        ("zeroed", "tifffile"),
        ("zeroed_l1", "auto"),
        ("zeroed_l1", "tifffile"),
        ("zeroed_j2k", "auto"),  # tifffile: OpenSlide does not read compression 34712
        ("zeroed_tcga", "auto"),  # OpenSlide, JPEG 2000
        ("zeroed_tcga", "tifffile"),
    ],
)
def test_open_slide_refuses_a_corrupt_tile_when_reading_it(bad, name, backend):
    path, level, tile, needle = READ_CASES[name]
    x, y, w, h = _tile_box(path, tile, level)
    with open_slide(path, mpp=0.5, backend=backend) as slide:
        good = slide.read_level(level, 0, 0, 64, 64)  # undamaged tiles still read
        assert good.shape == (64, 64, 3)
        with pytest.raises(HoverNetError) as info:
            slide.read_level(level, x, y, w, h)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode ") and FIX_SLIDE in message
    assert needle in message and f"of pyramid level {level} " in message
    if slide.backend_name == "tifffile":
        assert f"tile {tile} of pyramid level {level}" in message
    else:
        assert f"region at x={x}, y={y}" in message


def test_slide_read_never_fills_a_corrupt_tile(bad):
    """`Slide.read` (resampled, as slide mode reads) of an area holding the zeroed tile fails
    instead of giving white or grey pixels there."""
    path, _, tile, _ = READ_CASES["zeroed"]
    x, y, _, _ = _tile_box(path, tile)
    for backend in ("auto", "tifffile"):
        with open_slide(path, backend=backend) as slide:
            assert slide.best_level(0.3) == 0  # 0.25 um/px level 0, resampled by 1.2
            with pytest.raises(HoverNetError, match="cannot decode"):
                slide.read(int(x / 1.2), int(y / 1.2), 250, 250, mpp=0.3)


# ---------------------------------------------------------------------------------------------
# tile mode's and extract-patches' readers


@pytest.mark.parametrize(
    "name", ["cut_half", "cut_tiles", "cut_cmu", "cut_tcga", "cut_j2k", "empty_tif", "empty_svs"]
)
def test_image_readers_refuse_a_damaged_file(bad, name):
    path, needle = OPEN_CASES[name]
    for reader in (read_rgb, open_image):
        with pytest.raises(HoverNetError) as info:
            reader(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and needle in message and FIX_IMAGE in message


@pytest.mark.parametrize("name", ["zeroed", "zeroed_j2k", "zeroed_tcga"])
def test_image_readers_refuse_a_corrupt_tile(bad, name):
    path, level, tile, needle = READ_CASES[name]
    with pytest.raises(HoverNetError) as info:
        read_rgb(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot decode") and needle in message
    assert FIX_IMAGE in message
    x, y, w, h = _tile_box(path, tile)
    with open_image(path) as reader:
        with pytest.raises(HoverNetError) as info:
            reader.read_region(x, y, min(w, reader.width - x), min(h, reader.height - y))
    assert str(info.value).startswith(f"{path}: cannot decode") and FIX_IMAGE in str(info.value)


def test_plain_images_cut_short_or_empty(tmp_path):
    rgb = read_rgb(CMU)[:400, :400]
    for suffix in (".jpg", ".png"):
        ok, buf = cv2.imencode(suffix, rgb[:, :, ::-1])
        data = buf.tobytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(HoverNetError) as info:
            read_rgb(cut)
        assert str(info.value).startswith(f"{cut}: cannot decode") and FIX_IMAGE in str(info.value)
        with open_slide(cut, mpp=0.5) as slide:  # decoded whole on the first read
            with pytest.raises(HoverNetError, match="cannot decode"):
                slide.read_level(0, 0, 0, 10, 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(HoverNetError, match=r"empty\.png: the file is empty \(0 bytes\)"):
        read_rgb(empty)
    # the whole JPEG still reads
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes())
    assert read_rgb(whole).shape == (400, 400, 3)


# ---------------------------------------------------------------------------------------------
# the command line


def _good_slide(path: Path) -> Path:
    """A 512 x 512 crop of slide_b, tiled, 0.25 um/px (fast with --phases 1)."""
    crop = tifffile.imread(SLIDE_B)[1024:1536, 512:1024]
    tifffile.imwrite(
        path, crop, tile=(256, 256), photometric="rgb", compression="zlib",
        resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER",
    )  # fmt: skip
    return path


def test_slide_mode_cli_fails_each_damaged_slide_and_finishes_the_good_one(bad, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    _good_slide(slides / "good.tif")
    names = ["cut_half", "cut_tiles", "cut_cmu", "cut_tcga", "cut_j2k", "empty_tif"]
    names += ["zeroed", "zeroed_l1", "zeroed_j2k"]  # found when the tiles are decoded
    paths = [OPEN_CASES[n][0] if n in OPEN_CASES else READ_CASES[n][0] for n in names]
    for path in paths:
        shutil.copy(path, slides / path.name)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["infer", "--batch_size=4", "--nr_post_proc_workers=0", "wsi", f"--input_dir={slides}",
         f"--output_dir={out}", "--phases=1", "--quiet"]
    )  # fmt: skip
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stdout + stderr
    assert f"{len(paths)} slide(s) failed" in errors[0]
    for path in paths:
        assert f"{path.stem}: {slides / path.name}: " in errors[0], path.name
        for suffix in EXPORTS:
            assert not (out / f"{path.stem}{suffix}").exists(), path.stem + suffix
    assert errors[0].count(FIX_SLIDE) == len(paths)
    assert "zeroed: " in errors[0] and "Not a JPEG file" in errors[0]
    for suffix in EXPORTS:
        assert (out / f"good{suffix}").is_file(), suffix


def test_tile_mode_cli_names_each_damaged_image(bad, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = tifffile.imread(SLIDE_B)[1024:1280, 512:768]
    cv2.imwrite(str(folder / "good.png"), rgb[:, :, ::-1])
    data = cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    shutil.copy(OPEN_CASES["cut_half"][0], folder / "cut_half.tif")
    shutil.copy(READ_CASES["zeroed_j2k"][0], folder / "zeroed_j2k.tif")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["infer", "--batch_size=4", "--nr_post_proc_workers=0", "tile", f"--input_dir={folder}",
         f"--output_dir={out}", "--quiet"]
    )  # fmt: skip
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stdout + stderr
    for name in ("cut.jpg", "empty.png", "cut_half.tif", "zeroed_j2k.tif"):
        assert f"{folder / name}: " in errors[0], name
        assert not list(out.rglob(f"{Path(name).stem}.*")), name
    assert errors[0].count(FIX_IMAGE) == 4
    assert list(out.rglob("good.*"))


def test_extract_patches_cli_names_the_damaged_image(bad, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(OPEN_CASES["cut_tiles"][0], folder / "a.tif")
    shutil.copy(MASK_A, folder / "a_mask.png")
    out = tmp_path / "ds"
    code, stdout, stderr = run_cli(
        ["extract-patches", "--images", str(folder), "--annotations", str(folder),
         "--type-info", str(TYPE_INFO), "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 2, stdout + stderr
    assert "Traceback" not in stdout + stderr
    errors = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {folder / 'a.tif'}: "), errors
    assert "of pyramid level 2" in errors[0] and FIX_IMAGE in errors[0]
    assert not list(out.rglob("*.npz")) and not (out / "manifest.csv").exists()
