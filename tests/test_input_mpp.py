"""`--input_mpp`: tiles at another resolution than the model's are resampled for the network and
every output is mapped back to the input's pixels (hovernet/infer/resample.py).

A real MoNuSeg tile (1000 x 1000 at 0.25 um/px) goes through `DarkBlobNet` (tests/test_infer.py;
nuclei from dark blobs) recorded as a 0.5 um/px model, and, on the command line, through a
seeded random `lite` checkpoint recorded at 0.5 um/px.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import DATA, run_cli
from scipy import ndimage
from test_infer import DarkBlobNet

import hovernet
from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.infer.predict import segment_image
from hovernet.infer.resample import (
    labels_to_input,
    nuclei_to_input,
    refine_to_foreground,
    resolution_zoom,
    to_model_resolution,
)
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.io.annotations import read_qupath_geojson
from hovernet.io.slides import read_rgb
from hovernet.model.checkpoints import ModelMeta

MONUSEG = DATA / "monuseg" / "images" / "TCGA-21-5784-01Z-00-DX1.png"  # 1000 x 1000, 0.25


def blob_net(mpp: float | None = 0.5) -> DarkBlobNet:
    net = DarkBlobNet()
    net.meta = ModelMeta("fast", 3, None, mpp)
    return net


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return read_rgb(MONUSEG)


@pytest.fixture(scope="module")
def at_both(image):
    """(input-resolution results with input_mpp=0.25 at one phase, the same image at 0.5 without
    resampling)."""
    net = blob_net()
    small = to_model_resolution(image, 0.5)
    kw = {"precision": "fp32"}  # the geometry of mapping back, at full precision
    return (
        segment_image(net, image, input_mpp=0.25, phases=1, **kw),
        segment_image(net, small, input_mpp=0.5, **kw),
        small,
    )


def test_image_is_area_averaged_to_the_model_resolution(image, at_both):
    small = at_both[2]
    assert small.shape == (500, 500, 3) and small.dtype == np.uint8
    # 2x area averaging: each pixel is the rounded mean of a 2 x 2 block
    block = image.reshape(500, 2, 500, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(small.astype(np.float64) - block).max() <= 1
    big = to_model_resolution(small, 2.0)  # enlarging: bilinear
    np.testing.assert_array_equal(
        big, cv2.resize(small, (1000, 1000), interpolation=cv2.INTER_LINEAR)
    )


def test_map_back_is_nearest_upscaling_refined_to_the_enlarged_foreground(at_both):
    (inst, nuclei, pred), (inst_s, nuclei_s, pred_s), _ = at_both
    assert inst.shape == (1000, 1000) and pred.shape == (1000, 1000, 4)
    assert len(nuclei_s) > 50
    nearest = np.kron(inst_s, np.ones((2, 2), inst_s.dtype))
    prob = cv2.resize(pred_s[..., 1], (1000, 1000), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(inst, refine_to_foreground(nearest, prob))
    assert 0 < (inst != nearest).mean() < 0.05  # outlines move by a pixel, nuclei stay
    assert list(nuclei) == list(nuclei_s)  # ids preserved: nothing vanishes when enlarging
    for i, rec in nuclei.items():
        small = nuclei_s[i]
        assert (rec["type"], rec["type_prob"], rec["type_probs"]) == (
            small["type"],
            small["type_prob"],
            small["type_probs"],
        )
        # a pixel's centre at the model's resolution, x, is at 2x + 0.5 in input pixels
        # (the refined outline moves it by at most about a pixel)
        np.testing.assert_allclose(rec["centroid"], 2 * np.array(small["centroid"]) + 0.5, atol=1.5)
        assert np.abs(np.array(rec["bbox"]) - 2 * np.array(small["bbox"])).max() <= 1
    # the network maps, resampled back: the type channel by nearest neighbour
    np.testing.assert_array_equal(pred[..., 0], np.kron(pred_s[..., 0], np.ones((2, 2))))


def test_refinement_follows_the_probability_and_keeps_every_nucleus():
    labels = np.zeros((8, 8), np.int32)
    labels[2:6, 2:6] = 1  # a 4 x 4 block (a 2 x 2 network pixel nucleus, enlarged)
    labels[0:2, 6:8] = 2  # a nucleus whose probability is under 0.5 everywhere
    prob = np.zeros((8, 8), np.float32)
    prob[3:7, 2:5] = 0.9  # the probability says: one row lower, one column narrower
    refined = refine_to_foreground(labels, prob)
    expected = np.zeros_like(labels)
    expected[3:7, 2:5] = 1  # trimmed to the foreground, grown into it by the pixel below
    expected[0:2, 6:8] = 2  # kept as it was rather than lost
    np.testing.assert_array_equal(refined, expected)


def test_records_agree_with_the_mapped_back_map(at_both):
    inst, nuclei, _ = at_both[0]
    assert set(np.unique(inst)) - {0} == set(nuclei)
    for i, rec in nuclei.items():
        rows, cols = np.nonzero(inst == i)
        assert rec["bbox"] == [[rows.min(), cols.min()], [rows.max() + 1, cols.max() + 1]]
        np.testing.assert_allclose(rec["centroid"], [cols.mean(), rows.mean()], atol=1e-6)
        contour = np.array(rec["contour"])
        assert inst[contour[:, 1], contour[:, 0]].tolist() == [i] * len(contour)


def test_coarser_input_drops_vanishing_nuclei_and_renumbers():
    inst = np.zeros((8, 8), np.int32)
    inst[0:4, 0:4] = 1  # survives halving
    inst[4:8, 4:8] = 3
    inst[4, 4] = 2  # one pixel, between the sampled centres: vanishes
    nuclei = {
        1: {"type": 1, "type_prob": 0.9},
        2: {"type": 2, "type_prob": 0.8},
        3: {"type": 2, "type_prob": 0.7},
    }
    labels = labels_to_input(inst, (4, 4))
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    out, records = nuclei_to_input(inst, nuclei, (4, 4))
    assert out.shape == (4, 4) and set(np.unique(out)) == {0, 1, 2}
    assert [r["type_prob"] for r in records.values()] == [0.9, 0.7]  # old ids 1 and 3


def test_no_resampling_when_the_resolutions_agree(image):
    net = blob_net()
    crop = image[:300, :300]
    assert to_model_resolution(crop, resolution_zoom(0.5, 0.5)) is crop
    assert resolution_zoom(None, 0.5) is None
    a = segment_image(net, crop, input_mpp=0.5)
    with pytest.warns(HoverNetWarning, match="no input_mpp given.* 0.5 um/px"):
        b = segment_image(net, crop)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[2])
    # --proc_mpp runs the network at another resolution than the model's
    c = segment_image(net, crop, input_mpp=0.5, proc_mpp=1.0)
    assert c[0].shape == (300, 300) and not np.array_equal(c[0], a[0])


@pytest.mark.parametrize("value", [0, -0.25, float("nan"), float("inf")])
def test_bad_values_are_clear_errors(image, tmp_path, value):
    with pytest.raises(HoverNetError, match="--input_mpp must be a positive number"):
        segment_image(blob_net(), image[:64, :64], input_mpp=value)
    with pytest.raises(HoverNetError, match="--input_mpp must be a positive number"):
        TileConfig((MONUSEG,), tmp_path, input_mpp=value)
    with pytest.raises(HoverNetError, match="--proc_mpp must be a positive number"):
        TileConfig((MONUSEG,), tmp_path, proc_mpp=value)


def test_model_without_resolution_asks_for_proc_mpp(image):
    with pytest.raises(HoverNetError, match="does not record the resolution.*--proc_mpp"):
        segment_image(blob_net(None), image[:64, :64], input_mpp=0.25)
    inst, _, _ = segment_image(blob_net(None), image[:200, :200], input_mpp=0.25, proc_mpp=0.5)
    assert inst.shape == (200, 200)


def test_run_tile_outputs_are_in_input_pixels_and_geojson_round_trips(image, at_both, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(MONUSEG, src / "tile.png")
    lines: list[str] = []
    config = TileConfig(
        (src,), tmp_path / "out", input_mpp=0.25, save_raw_map=True, phases=1, precision="fp32"
    )
    summary = run_tile(blob_net(), config, log=lines.append)
    assert not summary.failed
    assert any("0.25 um/px are resampled to the model's resolution, 0.5 um/px" in x for x in lines)
    out = tmp_path / "out"
    mat = scipy.io.loadmat(out / "mat" / "tile.mat")
    inst, nuclei, _ = at_both[0]
    np.testing.assert_array_equal(mat["inst_map"], inst)
    assert mat["raw_map"].shape == (1000, 1000, 4)
    assert cv2.imread(str(out / "overlay" / "tile.png")).shape == (1000, 1000, 3)
    records = json.loads((out / "json" / "tile.json").read_text())["nuc"]
    assert len(records) == len(nuclei) == summary.done["tile"]
    for key, rec in records.items():
        np.testing.assert_allclose(rec["centroid"], nuclei[int(key)]["centroid"], atol=1e-6)
    # the GeoJSON outlines, rasterised back at the input's size, give the mapped-back map
    labels = read_qupath_geojson(out / "qupath" / "tile.geojson", (1000, 1000))
    back = labels.read_rows(0, labels.height)
    ids = np.zeros(back.max() + 1, np.int64)
    ids[1:] = list(nuclei)
    back = ids[back]
    filled = inst.copy()  # GeoJSON polygons have no holes (mask_outline fills them)
    for i, rec in nuclei.items():
        (r0, c0), (r1, c1) = rec["bbox"]
        crop = filled[r0:r1, c0:c1]
        crop[ndimage.binary_fill_holes(crop == i) & (crop == 0)] = i
    np.testing.assert_array_equal(back, filled)


def test_run_tile_says_what_resolution_the_input_is_assumed_at(image, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "crop.png"), image[:200, :200, ::-1])
    lines: list[str] = []
    run_tile(blob_net(), TileConfig((src,), tmp_path / "a", post_proc_workers=0), log=lines.append)
    assert lines[0] == (
        "input images are assumed to be at the model's resolution, 0.5 um/px; give "
        "--input_mpp if they are not (e.g. --input_mpp 0.25 for 40x)"
    )
    lines.clear()
    run_tile(
        blob_net(None), TileConfig((src,), tmp_path / "b", post_proc_workers=0), log=lines.append
    )
    assert not any("um/px" in x for x in lines)


def test_cli_end_to_end_with_input_mpp(image, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    crop = image[100:500, 200:600]  # 400 x 400 at 0.25 um/px
    cv2.imwrite(str(src / "crop.png"), crop[..., ::-1])
    out = tmp_path / "out"
    args = ["infer", "--backend=torch", "tile"]  # the bundled model: 0.5 um/px
    args += [f"--input_dir={src}", f"--output_dir={out}", "--save_raw_map", "--phases=1"]
    args += ["--input_mpp=0.25"]
    code, stdout, err = run_cli(args)
    assert code == 0, err
    assert "resampled to the model's resolution, 0.5 um/px" in stdout + err
    mat = scipy.io.loadmat(out / "mat" / "crop.mat")
    assert mat["inst_map"].shape == (400, 400) and mat["raw_map"].shape == (400, 400, 4)
    assert cv2.imread(str(out / "overlay" / "crop.png")).shape == (400, 400, 3)
    # a real model on real nuclei: the labels are the library's, mapped back from the 200 x 200
    # network maps and refined to the nucleus probability at the input's pixels
    inst, prob = mat["inst_map"], mat["raw_map"][..., 1]
    expected, nuclei, _ = segment_image(hovernet.load_model(), crop, input_mpp=0.25, phases=1)
    assert len(nuclei) > 20 and int(inst.max()) >= 0.95 * len(nuclei)
    assert np.mean((inst > 0) == (expected > 0)) > 0.995
    assert np.mean(prob[inst > 0] >= 0.5) > 0.97  # labels follow the probability...
    assert np.mean(prob[inst == 0] < 0.5) > 0.97
    blocks = np.kron(inst[::2, ::2], np.ones((2, 2), inst.dtype))
    assert (inst != blocks).sum() > 100  # ...not the network's 2 x 2 pixel grid

    code, _, err = run_cli([*args[:-1], "--input_mpp=0", "--overwrite"])
    assert code == 2 and err.strip().splitlines() == [
        "error: --input_mpp must be a positive number of microns per pixel (e.g. 0.25 at 40x, "
        "0.5 at 20x), got 0.0"
    ]
