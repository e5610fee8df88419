"""Window grid, mirror padding and per-window relabelling (hovernet.data.patches)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.windows import extract_windows

from hovernet.data.patches import (
    WindowSpec,
    mirror_copy,
    reflect_index,
    relabel_window,
    smallest_uint,
    window_grid,
)


def original_windows(image: np.ndarray, win: int, step: int) -> list[np.ndarray]:
    """The original's mirror extraction restated: pad by (win - step) split top/bottom, slide,
    then one extra row / column / corner flush with the far edge when steps do not end there."""
    diff = win - step
    pad = ((diff // 2, diff - diff // 2), (diff // 2, diff - diff // 2)) + ((0, 0),) * (
        image.ndim - 2
    )
    x = np.pad(image, pad, mode="reflect")
    h, w = x.shape[:2]

    def starts(length):
        last = (math.floor((length - win) / step) + 1) * step
        s = list(range(0, last, step))
        if (length - win) % step != 0:
            s.append(length - win)
        return s

    return [x[r : r + win, c : c + win] for r in starts(h) for c in starts(w)]


@pytest.mark.parametrize("shape", [(1000, 1000), (700, 541), (2048, 1100)])
def test_windows_equal_the_original_mirror_extraction(shape):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape + (3,), dtype=np.uint8)
    ours = [w for _, _, w in extract_windows(image, WindowSpec(540, 164))]
    ref = original_windows(image, 540, 164)
    assert len(ours) == len(ref)
    # same set of windows (the original lists the edge row/column after the regular block)
    key = lambda a: a.tobytes()  # noqa: E731
    assert sorted(map(key, ours)) == sorted(map(key, ref))


def test_1000_px_gives_49_windows_and_central_parts_cover_the_image():
    spec = WindowSpec(540, 164)
    grid = window_grid(1000, 1000, spec)
    assert len(grid) == 49
    covered = np.zeros((1000, 1000), bool)
    for y, x in grid:
        y0, x0 = y + spec.pad_before, x + spec.pad_before
        covered[max(y0, 0) : y0 + spec.step, max(x0, 0) : x0 + spec.step] = True
    assert covered.all()


@pytest.mark.parametrize("length", [1, 2, 3, 7, 50])
def test_reflect_index_matches_numpy_pad_even_for_pads_longer_than_the_image(length):
    data = np.arange(length) * 10
    pad = 188
    padded = np.pad(data, (pad, pad), mode="reflect")
    idx = reflect_index(np.arange(-pad, length + pad), length)
    assert (data[idx] == padded).all()


def test_image_smaller_than_a_window_gives_padded_windows():
    image = np.arange(256 * 320, dtype=np.int64).reshape(256, 320)
    wins = list(extract_windows(image, WindowSpec(540, 164)))
    assert len(wins) == 4 and all(w.shape == (540, 540) for _, _, w in wins)
    y, x, w = wins[0]
    assert (y, x) == (-188, -188)
    assert (w[188 : 188 + 256, 188 : 188 + 320] == image).all()


def test_relabel_gives_consecutive_ids_and_source_table():
    inst = np.array([[0, 7, 7], [0, 0, 300], [42, 0, 300]], np.uint32)
    local, source = relabel_window(inst)
    assert local.dtype == np.uint8
    assert local.max() == 3 and (source[local] == inst).all()
    assert list(source) == [0, 7, 42, 300]


def test_relabel_without_background_still_starts_at_one():
    local, source = relabel_window(np.full((4, 4), 5, np.uint32))
    assert (local == 1).all() and list(source) == [0, 5]


def test_mirror_copies_become_separate_instances():
    # a nucleus touching the top-left corner: its mirror copies must not share its id
    inst = np.zeros((40, 40), np.uint32)
    inst[0:5, 0:5] = 9
    spec = WindowSpec(30, 10)  # pads 10 before, 10 after
    y, x, win = next(iter(extract_windows(inst, spec)))
    offsets = np.arange(spec.size)
    local, source = relabel_window(win, mirror_copy(y + offsets, 40), mirror_copy(x + offsets, 40))
    assert (source[1:] == 9).all()
    assert len(source) - 1 == 4  # original + mirrored above, left, and in the corner
    # the copy inside the image keeps one id over the whole original nucleus
    inside = local[10:15, 10:15]
    assert len(np.unique(inside)) == 1 and inside[0, 0] > 0


def test_smallest_uint():
    assert smallest_uint(255) == np.uint8
    assert smallest_uint(256) == np.uint16
    assert smallest_uint(70000) == np.uint32


def test_window_spec_rejects_step_larger_than_window():
    with pytest.raises(ValueError):
        WindowSpec(100, 200)
