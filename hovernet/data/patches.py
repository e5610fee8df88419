"""Window grid with mirror padding, as the original HoVer-Net's patch extractor lays it out.

Pure functions, no file I/O. Coordinates are in the original (unpadded) image: a window's
top-left corner may be negative, and rows/columns outside the image are mirror copies
(`numpy.pad(..., mode="reflect")`: the edge pixel is not repeated).

The original pads each side by half of `window - step` (the extra pixel, if any, at the bottom /
right), then slides the window by `step` from the top-left corner and adds one last window flush
with the bottom / right edge when the steps do not end there. Every pixel of the image then lies
in the central `step x step` part of some window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    """Window size and step in pixels (square windows)."""

    size: int = 540
    step: int = 164

    def __post_init__(self) -> None:
        if self.size <= 0 or self.step <= 0:
            raise ValueError(f"window size {self.size} and step {self.step} must be positive")
        if self.step > self.size:
            raise ValueError(f"step {self.step} must not exceed the window size {self.size}")

    @property
    def pad_before(self) -> int:
        return (self.size - self.step) // 2

    @property
    def pad_after(self) -> int:
        return self.size - self.step - self.pad_before


def axis_starts(length: int, size: int, step: int, pad_before: int, pad_after: int) -> list[int]:
    """Window starts along one axis, in original coordinates (first one is `-pad_before`)."""
    padded = length + pad_before + pad_after
    if padded <= size:  # image smaller than a window: one window, mirror-filled
        return [-pad_before]
    starts = list(range(0, padded - size + 1, step))
    if starts[-1] != padded - size:
        starts.append(padded - size)
    return [s - pad_before for s in starts]


def window_grid(height: int, width: int, spec: WindowSpec) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of all windows, row by row, in original coordinates."""
    ys = axis_starts(height, spec.size, spec.step, spec.pad_before, spec.pad_after)
    xs = axis_starts(width, spec.size, spec.step, spec.pad_before, spec.pad_after)
    return [(y, x) for y in ys for x in xs]


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """Map coordinates outside 0..length-1 into the image as `np.pad(mode="reflect")` does.

    Repeats the reflection for pads longer than the image (period 2 * (length - 1)).
    """
    index = np.asarray(index, dtype=np.int64)
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    return np.where(folded < length, folded, period - folded)


def mirror_copy(index: np.ndarray, length: int) -> np.ndarray:
    """Which mirror copy each coordinate lies in: 0 inside the image, -1 / 1 just outside, ..."""
    return np.floor_divide(np.asarray(index, dtype=np.int64), length)


def smallest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned integer type holding 0..max_value."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def relabel_window(
    inst: np.ndarray, row_copy: np.ndarray | None = None, col_copy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive ids 1..N for a window of source instance ids (0 = background).

    `row_copy` / `col_copy` (from `mirror_copy`) split a nucleus from its mirror copies: each copy
    becomes its own instance, so targets computed per instance stay correct (the original reaches
    the same result later, relabelling disconnected pieces of one id). Returns the relabelled
    window in the smallest unsigned type and, for each new id, the source id (index 0 -> 0).
    """
    key = inst.astype(np.int64)
    if row_copy is not None and col_copy is not None:
        rows = np.asarray(row_copy) - np.min(row_copy)
        cols = np.asarray(col_copy) - np.min(col_copy)
        n_cols = int(cols.max()) + 1
        n_copies = (int(rows.max()) + 1) * n_cols
        if n_copies > 1:
            code = rows[:, None] * n_cols + cols[None, :]
            key = np.where(key > 0, key * n_copies + code, 0)
        else:
            n_copies = 1
    else:
        n_copies = 1
    keys, local = np.unique(key, return_inverse=True)
    if keys[0] != 0:  # no background in the window: ids must still start at 1
        local = local + 1
        keys = np.concatenate([[0], keys])
    source = keys // n_copies
    local = local.reshape(inst.shape).astype(smallest_uint(len(keys) - 1))
    return local, source
