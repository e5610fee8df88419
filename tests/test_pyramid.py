"""Label-map pyramids (hovernet.io.pyramid): written tile by tile, read by OpenSlide, tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from hovernet.io.pyramid import decode_rgb24, pyramid_shapes, write_label_pyramid
from hovernet.io.wsi import open_slide


def _labels(h: int, w: int, high: int, dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, high, (h, w)).astype(dtype)


def test_instance_ids_as_rgb24_pyramid(tmp_path: Path):
    lab = _labels(700, 1000, 5_000_000, np.uint32)
    calls = []

    def read_tile(x, y, w, h):
        calls.append((x, y, w, h))
        return lab[y : y + h, x : x + w]

    path = write_label_pyramid(tmp_path / "inst.tif", lab.shape, read_tile, mpp=0.25, tile=256)
    # every level-0 tile asked for exactly once, nothing bigger than a tile
    assert len(calls) == 3 * 4 and len(set(calls)) == len(calls)
    assert max(max(w, h) for _, _, w, h in calls) <= 256
    assert pyramid_shapes(lab.shape, 256) == [(700, 1000), (350, 500), (175, 250)]
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 3 and all(p.is_tiled for p in tif.pages)
        assert not tif.pages[0].subifds
        for i, page in enumerate(tif.pages):
            assert np.array_equal(decode_rgb24(page.asarray()), lab[:: 2**i, :: 2**i])
    osr = openslide.OpenSlide(str(path))
    try:
        assert osr.level_dimensions == ((1000, 700), (500, 350), (250, 175))
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        region = np.asarray(osr.read_region((300, 200), 0, (200, 100)))
        assert np.array_equal(decode_rgb24(region), lab[200:300, 300:500])
        region = np.asarray(osr.read_region((400, 200), 1, (100, 50)))
        assert np.array_equal(decode_rgb24(region), lab[200::2, 400::2][:50, :100])
    finally:
        osr.close()
    with open_slide(path) as slide:  # our own reader agrees on resolution and levels
        assert slide.mpp == pytest.approx(0.25) and len(slide.level_dimensions) == 3


def test_type_map_as_grey_pyramid(tmp_path: Path):
    types = _labels(300, 530, 5, np.uint8)
    path = write_label_pyramid(
        tmp_path / "type.tif",
        types.shape,
        lambda x, y, w, h: types[y : y + h, x : x + w],
        mpp=0.5,
        tile=128,
        dtype=np.uint8,
    )
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert [p.shape for p in pages] == [(300, 530), (150, 265), (75, 133), (38, 67)]
        assert np.array_equal(pages[2].asarray(), types[::4, ::4])
    osr = openslide.OpenSlide(str(path))
    try:
        assert len(osr.level_dimensions) == 4
        rgba = np.asarray(osr.read_region((0, 0), 1, (265, 150)))
        assert np.array_equal(rgba[:, :, 0], types[::2, ::2])
    finally:
        osr.close()


def test_failure_leaves_no_file(tmp_path: Path):
    def read_tile(x, y, w, h):
        if y > 0:
            raise RuntimeError("store went away")
        return np.zeros((h, w), np.uint32)

    with pytest.raises(RuntimeError, match="store went away"):
        write_label_pyramid(tmp_path / "x.tif", (300, 300), read_tile, mpp=0.25, tile=128)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="shape"):
        write_label_pyramid(
            tmp_path / "y.tif", (100, 100), lambda x, y, w, h: np.zeros((3, 3)), 0.25, tile=64
        )
    with pytest.raises(ValueError, match="0..16777215"):
        write_label_pyramid(
            tmp_path / "z.tif",
            (10, 10),
            lambda x, y, w, h: np.full((h, w), 2**24, np.uint32),
            0.25,
            tile=16,
        )
    assert list(tmp_path.iterdir()) == []
