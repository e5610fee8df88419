"""The windows of an in-memory array, cut the way extract-patches cuts them from a file band by
band (`hovernet.data.patches`): the tests compare both against the original's extractor."""

from __future__ import annotations

import numpy as np

from hovernet.data.patches import WindowSpec, reflect_index, window_grid


def extract_windows(image: np.ndarray, spec: WindowSpec):
    """Yield (y, x, window) for an in-memory array (H x W or H x W x C), mirror-padded.

    Equals cutting the windows of `window_grid` out of
    `np.pad(image, ((pad_before, pad_after), (pad_before, pad_after), ...), mode="reflect")`.
    """
    height, width = image.shape[:2]
    offsets = np.arange(spec.size)
    for y, x in window_grid(height, width, spec):
        rows = reflect_index(y + offsets, height)
        cols = reflect_index(x + offsets, width)
        yield y, x, image[rows[:, None], cols[None, :]]
