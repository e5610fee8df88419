"""Sub-pixel phases (`--phases`, hovernet/infer/resample.py): on images finer than the network,
the network runs on the image shifted by half a network pixel and the maps are averaged back
at the image's pixels.

The geometry is checked with a "network" whose maps are the image itself, shrunk: the merged
phases must recover the 40x image better than one phase does, and only with the shifts in
the right direction. The pipeline runs on a real MoNuSeg tile (1000 x 1000 at 0.25 um/px)
through `DarkBlobNet` (tests/test_infer.py) recorded as a 0.5 um/px model.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import run_cli
from test_input_mpp import MONUSEG, blob_net

from hovernet.errors import HoverNetError
from hovernet.infer.predict import segment_image
from hovernet.infer.resample import (
    merge_phases,
    phase_offsets,
    shift_image,
    to_model_resolution,
)
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.io.slides import read_rgb


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_rgb(MONUSEG)


def test_offsets_are_half_a_network_pixel():
    assert phase_offsets(0.5, 4) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 40x into 20x
    assert phase_offsets(0.5) == [(0, 0)]  # the default: one phase
    assert phase_offsets(0.5, 2) == [(0, 0), (1, 1)]
    assert phase_offsets(0.5, 1) == [(0, 0)]
    assert phase_offsets(0.25, 4) == [(0, 0), (0, 2), (2, 0), (2, 2)]  # 80x into 20x
    for scale in (None, 1.0, 0.8, 2.0):  # not at least 1.5x finer: one phase
        assert phase_offsets(scale) == [(0, 0)]
    with pytest.raises(HoverNetError, match=r"--phases 4 needs images at least 1.5x finer.*"
                       r"taken to be at the network's resolution: use --phases 1"):  # fmt: skip
        phase_offsets(None, 4)
    with pytest.raises(HoverNetError, match="only 1.25x as fine: use --phases 1"):
        phase_offsets(0.8, 2)
    with pytest.raises(HoverNetError, match="--phases must be one of 1, 2, 4, got 3"):
        phase_offsets(0.5, 3)


def test_shift_image_moves_content_up_and_left():
    a = np.arange(30, dtype=np.uint8).reshape(5, 6)
    s = shift_image(a, (1, 2))
    np.testing.assert_array_equal(s[:4, :4], a[1:, 2:])
    np.testing.assert_array_equal(s[4], s[3])  # the last row repeats the edge
    assert s.shape == a.shape and shift_image(a, (0, 0)) is a
    rgb = np.dstack([a, a, a])
    np.testing.assert_array_equal(shift_image(rgb, (1, 2))[..., 1], s)


def test_merged_phases_recover_detail_one_phase_loses(image):
    """With maps = the image shrunk, 4 merged phases come closer to the 40x image than one
    (which is plain bilinear enlarging), and shifts of the wrong sign do far worse."""
    grey = cv2.cvtColor(image[:400, :400], cv2.COLOR_RGB2GRAY).astype(np.float32)
    offsets = phase_offsets(0.5, 4)
    maps = [to_model_resolution(shift_image(grey, o), 0.5) for o in offsets]
    one = merge_phases(maps[:1], offsets[:1], grey.shape)[..., 0]
    np.testing.assert_allclose(
        one, cv2.resize(maps[0], (400, 400), interpolation=cv2.INTER_LINEAR), atol=1e-3
    )
    four = merge_phases(maps, offsets, grey.shape)[..., 0]
    wrong = merge_phases(maps, [(-dy, -dx) for dy, dx in offsets], grey.shape)[..., 0]
    inner = (slice(4, -4), slice(4, -4))  # away from the edge rows the shifts repeat
    err = {k: np.abs(v - grey)[inner].mean() for k, v in
           {"one": one, "four": four, "wrong": wrong}.items()}  # fmt: skip
    # measured: 4.63 vs 4.89 (the maps are box-averaged, so detail returns only partly), and
    # 11.3 with the shifts reversed
    assert err["four"] < 0.97 * err["one"] and err["wrong"] > 2 * err["one"], err


def test_segment_image_merges_phases(image):
    net = blob_net()
    crop = image[:400, :400]
    inst4, nuclei4, pred4 = segment_image(net, crop, input_mpp=0.25, phases=4)
    inst1, nuclei1, _ = segment_image(net, crop, input_mpp=0.25, phases=1)
    assert inst4.shape == (400, 400) and pred4.shape == (400, 400, 4)
    assert set(np.unique(inst4)) - {0} == set(nuclei4) == set(range(1, len(nuclei4) + 1))
    # the same nuclei, outlines moved by a pixel or so
    assert abs(len(nuclei4) - len(nuclei1)) <= 0.1 * len(nuclei1)
    assert 0 < ((inst4 > 0) != (inst1 > 0)).mean() < 0.05
    # the instances follow the probability averaged over the phases, at the input's pixels
    offsets = phase_offsets(0.5, 4)
    probs = []
    for offset in offsets:
        small = to_model_resolution(shift_image(crop, offset), 0.5)
        probs.append(segment_image(net, small, input_mpp=0.5)[2][..., 1:2])
    prob = merge_phases(probs, offsets, crop.shape)[..., 0]
    # every labelled pixel lies in that probability's foreground (one phase's do not)
    outside = [((inst > 0) & (prob < 0.5)).sum() for inst in (inst4, inst1)]
    assert outside[0] == 0 < outside[1]
    two = segment_image(net, crop, input_mpp=0.25, phases=2)[0]
    assert not np.array_equal(two, inst4) and not np.array_equal(two, inst1)


def test_run_tile_with_phases_and_the_cli(image, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "crop.png"), image[:300, :300, ::-1])
    cv2.imwrite(str(src / "other.png"), image[300:500, 300:600, ::-1])
    lines: list[str] = []
    config = TileConfig((src,), tmp_path / "out", input_mpp=0.25, post_proc_workers=0, phases=4)
    summary = run_tile(blob_net(), config, log=lines.append)
    assert not summary.failed and set(summary.done) == {"crop", "other"}
    assert any("4 sub-pixel phases of each image" in x for x in lines)
    one = run_tile(blob_net(), TileConfig((src,), tmp_path / "one", input_mpp=0.25, phases=1))
    assert summary.n_patches == 4 * one.n_patches
    for name in ("crop", "other"):  # the same results as segment_image, image by image
        img = read_rgb(src / f"{name}.png")
        inst, nuclei, _ = segment_image(blob_net(), img, input_mpp=0.25, phases=4)
        assert summary.done[name] == len(nuclei)
        written = cv2.imread(str(tmp_path / "out" / "overlay" / f"{name}.png"))
        assert written.shape[:2] == img.shape[:2]
    with pytest.raises(HoverNetError, match="--phases must be one of 1, 2, 4, got 0"):
        TileConfig((src,), tmp_path / "x", phases=0)
    code, _, err = run_cli(
        ["infer", "tile", f"--input_dir={src}", f"--output_dir={tmp_path / 'cli'}", "--phases=4"]
    )
    assert code == 2 and "--phases 4 needs images at least 1.5x finer" in err
    assert not (tmp_path / "cli").exists()  # refused before anything was written
