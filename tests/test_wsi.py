"""Slide reading at any resolution (hovernet.io.wsi) on real and synthetic slides."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from conftest import DATA

from hovernet.errors import HoverNetError
from hovernet.io.slides import read_rgb
from hovernet.io.wsi import mpp_from_magnification, open_slide, resolve_proc_mpp

CMU = DATA / "wsi" / "CMU-1-Small-Region.svs"
TCGA = DATA / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
SEED = DATA / "seed_format" / "slide_a.tif"


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Tissue-like test image: smooth colour fields plus mild texture (so that resampling
    methods agree to within a few grey levels)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(40, 230, (h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    big += rng.normal(0, 4, big.shape).astype(np.float32)
    return np.clip(big, 0, 255).astype(np.uint8)


def _area(img: np.ndarray, n: int) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.resize(img, (w // n, h // n), interpolation=cv2.INTER_AREA)


def _res(mpp: float) -> dict:
    return {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}


def _write_pyramid(path: Path, img: np.ndarray, mpp: float, layout: str) -> None:
    levels = [img, _area(img, 2), _area(img, 4)]
    opts = {"tile": (128, 128), "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path) as tw:
        if layout == "subifds":
            tw.write(levels[0], subifds=2, **opts, **_res(mpp))
            for lv in levels[1:]:
                tw.write(lv, subfiletype=1, **opts)
        else:
            for i, lv in enumerate(levels):
                extra = {"subfiletype": 1} if (i and layout == "pages") else {}
                tw.write(lv, **opts, **_res(mpp * 2**i), **extra)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[np.ndarray, dict[str, Path]]:
    """One 640 x 896 image stored in every layout the readers handle."""
    root = tmp_path_factory.mktemp("slides")
    img = _smooth_image(640, 896)
    files = {}
    for layout in ("subifds", "pages", "pages_untagged"):
        files[layout] = root / f"{layout}.tif"
        _write_pyramid(files[layout], img, 0.25, layout)
    files["strips"] = root / "strips.tif"
    tifffile.imwrite(
        files["strips"], img, photometric="rgb", rowsperstrip=48, compression="zlib", **_res(0.25)
    )
    files["raw"] = root / "raw.tif"  # uncompressed, one strip: memory-mapped
    tifffile.imwrite(files["raw"], img, photometric="rgb", **_res(0.25))
    files["png"] = root / "plain.png"
    cv2.imwrite(str(files["png"]), img[:, :, ::-1])
    return img, files


LAYOUTS = ["subifds", "pages", "pages_untagged", "strips", "raw", "png"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synthetic_layouts_read_like_a_whole_image_resample(synthetic, layout):
    img, files = synthetic
    with open_slide(files[layout], mpp=0.25 if layout == "png" else None) as slide:
        assert slide.dimensions == (896, 640) and slide.mpp == pytest.approx(0.25)
        pyramid = layout in ("subifds", "pages", "pages_untagged")
        assert len(slide.level_dimensions) == (3 if pyramid else 1)
        if layout == "pages":
            assert slide.backend_name == "openslide"  # OpenSlide sees this pyramid
        if layout == "subifds":
            assert slide.backend_name == "tifffile"  # OpenSlide would see one level only
        # native resolution: the pixels themselves
        assert np.array_equal(slide.read(37, 51, 300, 200, 0.25), img[51:251, 37:337])
        # whole-number factors: block means, from level 1 or 2 when there is one
        for n in (2, 4):
            assert slide.best_level(0.25 * n) == ((n // 2) if pyramid else 0)
            want = _area(img, n)
            got = slide.read(13, 9, 96, 80, 0.25 * n)
            assert np.array_equal(got, want[9:89, 13:109])
        # other factors, down and up (chosen so that OpenCV's whole-image grid is the same):
        # close to OpenCV's resample of the whole image
        cases = [(0.4, cv2.INTER_AREA), (0.8, cv2.INTER_AREA), (0.2, cv2.INTER_LINEAR)]
        cases.append((0.25 * 8 / 7, cv2.INTER_AREA))  # a little smaller: 784 x 560
        for mpp, interp in cases:
            w, h = slide.size_at(mpp)
            assert (w, h) == (round(896 * 0.25 / mpp), round(640 * 0.25 / mpp))
            whole = cv2.resize(img, (w, h), interpolation=interp).astype(int)
            x, y, rw, rh = w // 5, h // 4, w // 2, h // 2
            got = slide.read(x, y, rw, rh, mpp).astype(int)
            diff = np.abs(got - whole[y : y + rh, x : x + rw])
            assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 6, (mpp, diff.mean())


def test_regions_stitch_without_seams_and_outside_is_white(synthetic):
    img, files = synthetic
    with open_slide(files["pages"]) as slide:
        for mpp in (0.25, 0.5, 0.37, 0.9, 0.17):
            whole = slide.read(-20, -10, 260, 180, mpp).astype(int)
            parts = np.concatenate(
                [
                    np.concatenate(
                        [slide.read(-20, -10, 113, 77, mpp), slide.read(93, -10, 147, 77, mpp)],
                        axis=1,
                    ),
                    np.concatenate(
                        [slide.read(-20, 67, 113, 103, mpp), slide.read(93, 67, 147, 103, mpp)],
                        axis=1,
                    ),
                ],
                axis=0,
            ).astype(int)
            assert np.abs(parts - whole).max() <= 1, mpp
        w, h = slide.size_at(0.5)
        edge = slide.read(w - 50, h - 40, 100, 100, 0.5)
        assert (edge[45:, :] == 255).all() and (edge[:, 55:] == 255).all()
        assert edge[:35, :45].mean() < 240  # the slide part is image, not white
        assert (slide.read(w + 10, 0, 64, 64, 0.5) == 255).all()


def test_cmu_svs_real_slide():
    with open_slide(CMU) as slide:
        assert slide.backend_name == "openslide"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499) and slide.magnification == 20
        full = read_rgb(CMU)
        assert np.array_equal(slide.read(1000, 1200, 256, 200, 0.499), full[1200:1400, 1000:1256])
        # 40x model on a 20x slide: upsampled about 2x
        w, h = slide.size_at(0.25)
        assert (w, h) == (round(2220 * 0.499 / 0.25), round(2967 * 0.499 / 0.25))
        up = slide.read(2000, 2400, 512, 512, 0.25).astype(int)
        # reference: each output pixel centre mapped onto level 0, sampled bilinearly (remap)
        f = 0.25 / 0.499
        map_x = np.tile(((np.arange(2000, 2512) + 0.5) * f - 0.5).astype(np.float32), (512, 1))
        map_y = np.tile(((np.arange(2400, 2912) + 0.5) * f - 0.5).astype(np.float32), (512, 1)).T
        ref = cv2.remap(full, map_x, np.ascontiguousarray(map_y), cv2.INTER_LINEAR).astype(int)
        assert np.abs(up - ref).max() <= 2
        thumb, thumb_mpp = slide.thumbnail(512)
        assert max(thumb.shape[:2]) == 512 and thumb_mpp == pytest.approx(0.499 * 2967 / 512)


def test_tcga_svs_has_no_mpp_unless_given():
    with pytest.raises(HoverNetError) as info:
        open_slide(TCGA)
    msg = str(info.value)
    assert TCGA.name in msg and "--slide_mpp" in msg and "--slide_mag" in msg
    with open_slide(TCGA, magnification=20) as slide:
        assert slide.mpp == 0.5 and slide.magnification == 20
        assert len(slide.level_dimensions) == 2
        # 2221 x 1783 is a downsample of 2.0005, close enough to serve 1.0 um/px
        assert slide.best_level(1.0) == 1 and slide.best_level(0.9) == 0
        region = slide.read(900, 700, 256, 256, 1.0).astype(int)
        # level 1 is 2221 x 1783 px: pixel i of the 1.0 um/px grid is at i * 2221 / 2221.5
        fx, fy = 2.0 / (4443 / 2221), 2.0 / (3567 / 1783)
        lv1 = slide.read_level(1, 880, 680, 300, 300)
        map_x = np.tile(
            ((np.arange(900, 1156) + 0.5) * fx - 0.5 - 880).astype(np.float32), (256, 1)
        )
        map_y = np.tile(((np.arange(700, 956) + 0.5) * fy - 0.5 - 680).astype(np.float32), (256, 1))
        ref = cv2.remap(lv1, map_x, np.ascontiguousarray(map_y.T), cv2.INTER_LINEAR)
        assert np.abs(region - ref).max() <= 2
        # and it shows the same tissue as level 0 (JPEG 2000 levels differ in fine detail)
        level0 = _area(slide.read_level(0, 1800, 1400, 512, 512), 2)
        blur = lambda a: cv2.GaussianBlur(a.astype(np.float32), (0, 0), 2)  # noqa: E731
        assert np.abs(blur(region) - blur(level0)).mean() < 3
    with open_slide(TCGA, mpp=0.3) as slide:
        assert slide.mpp == 0.3 and slide.mpp_source.startswith("given")


def test_seed_slide_pyramid():
    with open_slide(SEED) as slide:
        assert slide.dimensions == (2048, 3584) and slide.mpp == pytest.approx(0.25)
        assert len(slide.level_dimensions) == 3
        assert slide.best_level(0.5) == 1 and slide.best_level(0.45) == 0
        assert np.array_equal(
            slide.read(100, 200, 300, 300, 0.5), slide.read_level(1, 100, 200, 300, 300)
        )
        full = read_rgb(SEED)
        region = slide.read(100, 200, 300, 300, 0.5).astype(int)
        assert np.abs(region - _area(full, 2)[200:500, 100:400]).mean() < 5  # JPEG levels


def test_forced_backends_agree(synthetic):
    _, files = synthetic
    with open_slide(files["pages"], backend="openslide") as a:
        with open_slide(files["pages"], backend="tifffile") as b:
            assert (a.backend_name, b.backend_name) == ("openslide", "tifffile")
            assert a.level_dimensions == b.level_dimensions and a.mpp == b.mpp
            for mpp in (0.25, 0.5, 0.37, 1.3):
                assert np.array_equal(a.read(-5, 7, 150, 130, mpp), b.read(-5, 7, 150, 130, mpp))
    with pytest.raises(HoverNetError, match="OpenSlide cannot open"):
        open_slide(files["strips"], backend="openslide")


def test_mpp_override_and_errors(synthetic, tmp_path):
    _, files = synthetic
    with open_slide(files["strips"], mpp=0.5) as slide:
        assert slide.mpp == 0.5 and slide.size_at(1.0) == (448, 320)
    with open_slide(files["strips"], magnification=40) as slide:
        assert slide.mpp == 0.25 and slide.magnification == 40
    with pytest.raises(HoverNetError, match="--slide_mpp"):
        open_slide(files["png"])  # a PNG records no microscope resolution
    with pytest.raises(HoverNetError, match="positive"):
        open_slide(files["strips"], mpp=-1)
    # 72 dpi is a screen resolution, not a scan: refused, not taken as 353 um/px
    tifffile.imwrite(tmp_path / "dpi.tif", np.zeros((64, 64, 3), np.uint8), resolution=(72, 72))
    with pytest.raises(HoverNetError, match="352.778 um/px, not a microscope scan"):
        open_slide(tmp_path / "dpi.tif")
    with pytest.raises(HoverNetError, match="no such file"):
        open_slide(tmp_path / "missing.svs")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(HoverNetError, match="unsupported"):
        open_slide(tmp_path / "x.txt")


def test_ome_tiff_subifd_pyramid_and_mpp(tmp_path):
    img = _smooth_image(256, 384)
    path = tmp_path / "a.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        opts = {"photometric": "rgb", "tile": (128, 128)}
        tw.write(img, subifds=1, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **opts)
        tw.write(_area(img, 2), subfiletype=1, **opts)
    with open_slide(path) as slide:
        assert slide.backend_name == "tifffile" and slide.mpp == 0.5
        assert "OME PhysicalSizeX" in slide.mpp_source
        assert len(slide.level_dimensions) == 2
        assert np.array_equal(slide.read(10, 20, 64, 64, 1.0), _area(img, 2)[20:84, 10:74])


def test_too_big_to_decode_whole_is_refused(synthetic, tmp_path, monkeypatch):
    _, files = synthetic
    one_block = tmp_path / "one_block.tif"
    tifffile.imwrite(
        one_block,
        _smooth_image(640, 896),
        photometric="rgb",
        compression="zlib",
        rowsperstrip=640,
        **_res(0.25),
    )
    monkeypatch.setenv("HOVERNET_MAX_DECODE_MB", "1")  # 1 MiB
    for path in (files["png"], one_block):
        with pytest.raises(HoverNetError) as info:
            open_slide(path, mpp=0.25)
        assert path.name in str(info.value) and "tiled pyramidal TIFF" in str(info.value)
    # tiled and stripped files are still read region by region under that limit
    with open_slide(files["strips"]) as slide:
        assert slide.read(0, 0, 64, 64, 0.25).shape == (64, 64, 3)


def test_parallel_reads_agree(synthetic):
    _, files = synthetic
    boxes = [(x, y, 200, 150) for x in range(0, 700, 70) for y in range(0, 500, 125)]
    for layout in ("strips", "pages"):
        with open_slide(files[layout]) as slide:
            want = [slide.read(*b, 0.37) for b in boxes]
            got: dict[int, np.ndarray] = {}

            def work(i0: int, slide=slide, got=got) -> None:
                for i in range(i0, len(boxes), 4):
                    got[i] = slide.read(*boxes[i], 0.37)

            threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(np.array_equal(got[i], want[i]) for i in range(len(boxes)))


def test_resolve_proc_mpp():
    assert resolve_proc_mpp(0.25, None, None) == 0.25
    assert resolve_proc_mpp(0.25, 0.5, None) == 0.5
    assert resolve_proc_mpp(None, None, 20) == 0.5 == mpp_from_magnification(20)
    with pytest.raises(HoverNetError, match="--proc_mpp"):
        resolve_proc_mpp(None, None, None)
    with pytest.raises(HoverNetError, match="only one"):
        resolve_proc_mpp(0.25, 0.5, 40)
    with pytest.raises(HoverNetError, match="positive"):
        resolve_proc_mpp(0.25, 0.0, None)


def test_stripped_tiff_decodes_only_the_strips_a_region_needs(synthetic, monkeypatch):
    from hovernet.io import wsi_backends

    img, files = synthetic
    decoded: list[int] = []
    original = wsi_backends._LRU.put

    def spy(self, key, arr):  # every freshly decoded strip is offered to the cache
        decoded.append(key[1])
        return original(self, key, arr)

    monkeypatch.setattr(wsi_backends._LRU, "put", spy)
    with open_slide(files["strips"]) as slide:  # 48-row strips
        assert np.array_equal(slide.read(10, 100, 50, 50, 0.25), img[100:150, 10:60])
        assert sorted(decoded) == [2, 3]
        slide.read(500, 110, 80, 30, 0.25)  # same strips again: from the strip cache
        assert sorted(decoded) == [2, 3]
    with open_slide(files["raw"]) as slide:  # uncompressed: memory-mapped, nothing decoded
        assert np.array_equal(slide.read(600, 300, 64, 64, 0.25), img[300:364, 600:664])
        assert sorted(decoded) == [2, 3]


def test_large_reads_are_split_into_the_same_pixels(synthetic, monkeypatch):
    from hovernet.io import wsi

    _, files = synthetic
    with open_slide(files["strips"]) as slide:
        whole = {mpp: slide.read(-30, 20, 400, 300, mpp).astype(int) for mpp in (0.5, 0.37, 0.2)}
        monkeypatch.setattr(wsi, "READ_CHUNK_BYTES", 30_000)  # forces ~20+ pieces
        for mpp, want in whole.items():
            assert np.abs(slide.read(-30, 20, 400, 300, mpp).astype(int) - want).max() <= 1
        thumb, thumb_mpp = slide.thumbnail(100)
        assert thumb.shape == (71, 100, 3) and thumb_mpp == pytest.approx(0.25 * 8.96)
