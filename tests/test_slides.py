from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import DATA

from hovernet.errors import HoverNetError
from hovernet.io.slides import open_image, read_rgb


def test_png_and_pyramidal_tiff_and_svs():
    png = read_rgb(
        DATA / "dsb2018_he" / "images" / sorted((DATA / "dsb2018_he/images").iterdir())[0].name
    )
    assert png.shape == (256, 320, 3) and png.dtype == np.uint8
    tif = read_rgb(DATA / "seed_format" / "slide_a.tif")
    assert tif.shape == (3584, 2048, 3)
    assert 50 < tif.mean() < 250  # real tissue, not a blank level
    svs = read_rgb(DATA / "wsi" / "CMU-1-Small-Region.svs")
    assert svs.shape == (2967, 2220, 3)


def test_grey_tiff_is_three_equal_channels_to_the_region_reader(tmp_path: Path):
    grey = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(64, 48)
    tifffile.imwrite(tmp_path / "g.tif", grey)
    with open_image(tmp_path / "g.tif") as reader:
        rgb = reader.read_region(0, 0, 48, 64)
    assert rgb.shape == (64, 48, 3)
    assert (rgb[:, :, 0] == grey).all() and (rgb[:, :, 2] == grey).all()
    with pytest.raises(HoverNetError, match="g.tif: greyscale image"):
        read_rgb(tmp_path / "g.tif")  # an H&E input: refused


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("missing.png", None, "no such file"),
        ("broken.png", b"not a png at all", "cannot decode"),
        ("broken.tif", b"II*\x00garbage", "cannot read the TIFF"),
        ("notes.txt", b"hello", "unsupported image type"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(HoverNetError) as info:
        read_rgb(path)
    assert needle in str(info.value) and name in str(info.value)


def test_16bit_refused(tmp_path: Path):
    tifffile.imwrite(tmp_path / "deep.tif", np.zeros((8, 8, 3), np.uint16))
    with pytest.raises(HoverNetError, match="8-bit"):
        read_rgb(tmp_path / "deep.tif")
