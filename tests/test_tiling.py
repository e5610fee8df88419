"""Tiling: the stitched window outputs equal the network applied to the whole padded image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support.stitcher import Stitcher

from hovernet.config import GEOMETRY, ModelGeometry
from hovernet.errors import HoverNetError
from hovernet.infer.predict import predict_maps, predict_stream
from hovernet.infer.tiling import TileGrid

RADIUS = 3  # the stand-in's receptive field: (2 * RADIUS + 1)^2 pixels


class LocalNet(torch.nn.Module):
    """A fully convolutional stand-in for HoVer-Net with the same input -> output geometry.

    Each output pixel is computed from the (2 * RADIUS + 1)^2 input pixels around the matching
    input pixel (box sums of integers: exact in float32), so running it on a whole padded image
    is defined and gives what the tiled run must reproduce. Any input size works: the output
    is the input less `margin` on each side.
    """

    def __init__(self, geometry: ModelGeometry, nr_types: int | None = 4):
        super().__init__()
        self.geometry = geometry
        self.nr_types = nr_types

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        k = 2 * RADIUS + 1
        box = F.conv2d(x, torch.ones(3, 1, k, k), groups=3)  # per-channel box sums
        crop = self.geometry.margin - RADIUS
        box = box[:, :, crop : box.shape[2] - crop, crop : box.shape[3] - crop] / 2000.0
        r, g, b = box[:, 0:1], box[:, 1:2], box[:, 2:3]
        out = {"np": torch.cat([r - g, g - b], 1), "hv": torch.cat([r - b, b * 0.5], 1)}
        if self.nr_types:
            out["tp"] = torch.cat([r * (i + 1) - g * i for i in range(self.nr_types)], 1)
        return out


def direct_maps(model: LocalNet, image: np.ndarray, grid: TileGrid) -> np.ndarray:
    """[np prob, h, v, type softmax...] of the model on the whole padded image, cropped."""
    x = torch.from_numpy(grid.pad(image)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        out = model(x)
    parts = [torch.softmax(out["np"], 1)[:, 1:], out["hv"]]
    if "tp" in out:
        parts.append(torch.softmax(out["tp"], 1))
    maps = torch.cat(parts, 1)[0].permute(1, 2, 0).numpy()
    height, width = image.shape[:2]
    return maps[:height, :width]


def random_image(shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


# geometries of both real modes, plus a small one that makes many windows cheaply
SMALL = ModelGeometry("fast", 40, 16)


@pytest.mark.parametrize(
    "geometry, shape",
    [
        (SMALL, (48, 64)),  # multiples of the stride
        (SMALL, (50, 37)),  # not multiples
        (SMALL, (9, 5)),  # smaller than one output square: reflect padding repeats
        (SMALL, (1, 20)),  # a single row
        (GEOMETRY["original"], (170, 81)),
        (GEOMETRY["fast"], (164, 100)),
        (GEOMETRY["fast"], (60, 60)),  # smaller than one window
    ],
)
def test_tiled_equals_whole_image(geometry, shape):
    model = LocalNet(geometry)
    image = random_image(shape, seed=sum(shape))
    grid = TileGrid(shape, geometry.input_size, geometry.output_size)
    maps = predict_maps(model, image, batch_size=3, precision="fp32", geometry=geometry)
    expected = direct_maps(model, image, grid)

    assert maps.pred_map.shape == (*shape, 4)
    np.testing.assert_allclose(maps.pred_map[..., 1:], expected[..., :3], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(maps.type_softmax, expected[..., 3:], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(maps.pred_map[..., 0], np.argmax(expected[..., 3:], axis=-1))
    assert len(np.unique(maps.pred_map[..., 0])) > 1  # the type map is not trivially constant


def test_untyped_maps_have_three_channels():
    model = LocalNet(SMALL, nr_types=None)
    image = random_image((30, 41), seed=1)
    grid = TileGrid(image.shape[:2], SMALL.input_size, SMALL.output_size)
    maps = predict_maps(model, image, batch_size=2, precision="fp32", geometry=SMALL)
    assert maps.type_softmax is None
    np.testing.assert_allclose(maps.pred_map, direct_maps(model, image, grid), rtol=1e-6)


def test_batches_spanning_images_match_single_runs():
    model = LocalNet(SMALL)
    images = [random_image(shape, seed=i) for i, shape in enumerate([(20, 33), (7, 7), (40, 18)])]
    streamed = list(predict_stream(model, enumerate(images), batch_size=4, geometry=SMALL))
    assert [key for key, _, _ in streamed] == [0, 1, 2]
    for (_, image, maps), original in zip(streamed, images, strict=True):
        assert image is original
        single = predict_maps(model, original, batch_size=1, geometry=SMALL)
        np.testing.assert_array_equal(maps.pred_map, single.pred_map)


def original_padding(image: np.ndarray, win: int, step: int) -> tuple[np.ndarray, int, int]:
    """The original tile inference's padding and window rows/columns (`_prepare_patching`)."""
    height, width = image.shape[:2]
    last_h = (math.ceil((height - step) / step) + 1) * step
    last_w = (math.ceil((width - step) / step) + 1) * step
    top = (win - step) // 2
    pad = ((top, last_h + win - height), (top, last_w + win - width), (0, 0))
    return np.pad(image, pad, "reflect"), last_h // step, last_w // step


@pytest.mark.parametrize("shape", [(256, 256), (300, 170), (50, 81), (1000, 80)])
@pytest.mark.parametrize("mode", ["original", "fast"])
def test_windows_equal_the_originals(mode, shape):
    geometry = GEOMETRY[mode]
    win, step = geometry.input_size, geometry.output_size
    image = random_image(shape, seed=3)
    theirs, n_rows, n_cols = original_padding(image, win, step)
    grid = TileGrid(shape, win, step)
    ours = grid.pad(image)
    assert (grid.n_rows, grid.n_cols) == (n_rows, n_cols)
    for index, (y, x) in enumerate(grid.windows()):
        np.testing.assert_array_equal(grid.crop(ours, index), theirs[y : y + win, x : x + win])


def test_stitcher_places_and_crops():
    grid = TileGrid((5, 7), input_size=8, output_size=4)
    assert (grid.n_rows, grid.n_cols, grid.padding) == (2, 2, ((2, 5), (2, 3)))
    stitcher = Stitcher(grid, channels=1)
    for index in range(len(grid)):
        assert not stitcher.done
        stitcher.add(index, np.full((4, 4, 1), index, np.float32))
    out = stitcher.result()[..., 0]
    assert out.shape == (5, 7)
    assert out[0, 0] == 0 and out[0, 4] == 1 and out[4, 0] == 2 and out[4, 6] == 3


def test_stitcher_refuses_incomplete_and_bad_shapes():
    grid = TileGrid((5, 7), input_size=8, output_size=4)
    stitcher = Stitcher(grid, channels=2)
    with pytest.raises(ValueError, match="windows have no output"):
        stitcher.result()
    with pytest.raises(ValueError, match="window output shape"):
        stitcher.add(0, np.zeros((4, 4, 3), np.float32))


def test_grid_rejects_bad_geometry():
    with pytest.raises(HoverNetError, match="empty image"):
        TileGrid((0, 5), 8, 4)
    with pytest.raises(HoverNetError, match="even number"):
        TileGrid((5, 5), 9, 4)


def test_image_must_be_rgb_uint8():
    with pytest.raises(HoverNetError, match="uint8 RGB"):
        predict_maps(LocalNet(SMALL), np.zeros((10, 10, 3), np.float32), geometry=SMALL)


def test_bf16_autocast_stays_close_to_fp32():
    model = LocalNet(SMALL)
    image = random_image((40, 40), seed=5)
    fp32 = predict_maps(model, image, precision="fp32", geometry=SMALL)
    bf16 = predict_maps(model, image, precision="bf16", geometry=SMALL)
    assert bf16.pred_map.dtype == np.float32
    assert not np.array_equal(bf16.pred_map, fp32.pred_map)  # autocast did run in bf16
    # box sums up to 49 x 255 keep 8 significant bits in bf16: errors up to ~0.03 here
    np.testing.assert_allclose(bf16.pred_map[..., 1:], fp32.pred_map[..., 1:], atol=0.05)


def test_unknown_precision_is_refused():
    with pytest.raises(HoverNetError, match="unknown precision 'fp8'"):
        predict_maps(LocalNet(SMALL), random_image((8, 8), 0), precision="fp8", geometry=SMALL)


def test_windows_not_selected_read_as_background_and_the_rest_are_unchanged():
    """`select` runs only the chosen windows: theirs equal a full run, the others are no
    nucleus (probability 0, h = v = 0, type 0, softmax [1, 0, ...]); an image with no window
    chosen still comes out, in order."""
    model = LocalNet(SMALL)
    images = [random_image(shape, seed=i) for i, shape in enumerate([(20, 33), (9, 9), (40, 18)])]
    chosen: dict[int, np.ndarray] = {}

    def select(key, grid):
        rng = np.random.default_rng(key)
        chosen[key] = rng.random(len(grid)) < 0.5 if key != 1 else np.zeros(len(grid), bool)
        return chosen[key]

    streamed = list(
        predict_stream(model, enumerate(images), batch_size=3, geometry=SMALL, select=select)
    )
    assert [key for key, _, _ in streamed] == [0, 1, 2]
    for key, image, maps in streamed:
        full = predict_maps(model, image, batch_size=1, geometry=SMALL)
        grid = TileGrid(image.shape[:2], SMALL.input_size, SMALL.output_size)
        assert 0 < chosen[0].sum() < len(chosen[0])
        for index, (y, x) in enumerate(grid.windows()):
            square = np.s_[y : y + SMALL.output_size, x : x + SMALL.output_size]
            if chosen[key][index]:
                np.testing.assert_array_equal(maps.pred_map[square], full.pred_map[square])
                np.testing.assert_array_equal(maps.type_softmax[square], full.type_softmax[square])
            else:
                assert (maps.pred_map[square] == 0).all()
                assert (maps.type_softmax[square][..., 0] == 1).all()
                assert (maps.type_softmax[square][..., 1:] == 0).all()


def test_batches_keep_to_one_image_when_asked():
    """`span=False`: an image's windows never share a batch with another's (slide mode), and
    the maps are those of the spanning run."""
    sizes: list[int] = []
    model = LocalNet(SMALL)
    model.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    images = [random_image(shape, seed=i) for i, shape in enumerate([(20, 33), (9, 9), (40, 18)])]
    counts = [len(TileGrid(im.shape[:2], SMALL.input_size, SMALL.output_size)) for im in images]
    runs = {}
    for span in (True, False):
        sizes.clear()
        runs[span] = list(
            predict_stream(model, enumerate(images), batch_size=4, geometry=SMALL, span=span)
        )
        if span:
            assert sizes == [4] * (sum(counts) // 4) + (
                [sum(counts) % 4] if sum(counts) % 4 else []
            )
        else:
            expected = [s for c in counts for s in [4] * (c // 4) + ([c % 4] if c % 4 else [])]
            assert sizes == expected
    for (_, _, a), (_, _, b) in zip(runs[True], runs[False], strict=True):
        np.testing.assert_array_equal(a.pred_map, b.pred_map)
