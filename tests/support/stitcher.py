"""`Stitcher`: one image's window outputs placed one by one into its map, the way the engine
stitched before its maps stayed on the device; the reference `tests/test_engine_device.py` and
`benchmarks/bench_engine.py` compare `predict_stream` with (windows from
`hovernet.infer.tiling.TileGrid`)."""

from __future__ import annotations

import numpy as np

from hovernet.infer.tiling import TileGrid


class Stitcher:
    """Collects the output squares of one image's windows into an H x W x C map."""

    def __init__(self, grid: TileGrid, channels: int, dtype: np.dtype = np.float32) -> None:
        self.grid = grid
        step = grid.output_size
        self._canvas = np.zeros((grid.n_rows * step, grid.n_cols * step, channels), dtype=dtype)
        self._windows = grid.windows()
        self._filled = np.zeros(len(grid), dtype=bool)

    def add(self, index: int, output: np.ndarray) -> None:
        """Place the output (output_size x output_size x C) of window `index`."""
        step = self.grid.output_size
        if output.shape[:2] != (step, step) or output.shape[2] != self._canvas.shape[2]:
            raise ValueError(
                f"window output shape {output.shape} != {(step, step, self._canvas.shape[2])}"
            )
        y, x = self._windows[index]
        self._canvas[y : y + step, x : x + step] = output
        self._filled[index] = True

    @property
    def done(self) -> bool:
        return bool(self._filled.all())

    def result(self) -> np.ndarray:
        """The stitched map cropped to the image (H x W x C)."""
        if not self.done:
            missing = int((~self._filled).sum())
            raise ValueError(f"{missing} of {len(self.grid)} windows have no output yet")
        height, width = self.grid.image_shape
        return self._canvas[:height, :width]
