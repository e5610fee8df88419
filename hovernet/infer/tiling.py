"""Sliding-window tiling for images of any size: the window grid and mirror padding.

The network maps an `input_size` window to the central `output_size` square of it. As in the
original HoVer-Net tile inference, windows are laid out with a stride equal to the output size,
so the output squares tile the image exactly once, and the image is mirror-padded ("reflect",
the edge pixel not repeated) by the margin `(input_size - output_size) // 2` on the top/left and
by the margin plus whatever rounds the image up to a whole number of output squares on the
bottom/right. The original pads the bottom/right by one further stride that no window reads;
reflect padding of the rows that are read does not depend on how far the padding goes, so the
windows here are identical to the original's.

Everything here is pure (arrays in, arrays out) and independent of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hovernet.errors import HoverNetError


@dataclass(frozen=True)
class TileGrid:
    """The windows that cover one image of shape `image_shape` (height, width)."""

    image_shape: tuple[int, int]
    input_size: int
    output_size: int

    def __post_init__(self) -> None:
        height, width = self.image_shape
        if height < 1 or width < 1:
            raise HoverNetError(f"cannot tile an empty image of shape {self.image_shape}")
        if not 0 < self.output_size <= self.input_size:
            raise HoverNetError(
                f"output size {self.output_size} must be in 1..input size {self.input_size}"
            )
        if (self.input_size - self.output_size) % 2:
            raise HoverNetError(
                f"input size {self.input_size} and output size {self.output_size} must differ "
                "by an even number of pixels"
            )

    @property
    def margin(self) -> int:
        """Pixels between a window's edge and its output square."""
        return (self.input_size - self.output_size) // 2

    @property
    def n_rows(self) -> int:
        return max(1, math.ceil(self.image_shape[0] / self.output_size))

    @property
    def n_cols(self) -> int:
        return max(1, math.ceil(self.image_shape[1] / self.output_size))

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, bottom), (left, right)) mirror padding applied to the image."""
        height, width = self.image_shape
        bottom = self.margin + self.n_rows * self.output_size - height
        right = self.margin + self.n_cols * self.output_size - width
        return (self.margin, bottom), (self.margin, right)

    def windows(self) -> list[tuple[int, int]]:
        """Top-left corners (y, x) of the input windows in the padded image, row by row.

        The output square of window (y, x) covers image rows y..y+output_size and columns
        x..x+output_size (before cropping to the image).
        """
        step = self.output_size
        return [
            (row * step, col * step) for row in range(self.n_rows) for col in range(self.n_cols)
        ]

    def pad(self, image: np.ndarray) -> np.ndarray:
        """Mirror-pad an H x W (x C) array so that every window lies inside it."""
        if image.shape[:2] != tuple(self.image_shape):
            raise ValueError(f"image shape {image.shape[:2]} != grid shape {self.image_shape}")
        pad = self.padding + ((0, 0),) * (image.ndim - 2)
        # numpy's "reflect" also handles padding wider than the image (small images) by
        # reflecting repeatedly, and repeats the pixel of a 1-pixel side.
        return np.pad(image, pad, mode="reflect")

    def crop(self, padded: np.ndarray, index: int) -> np.ndarray:
        """The input window `index` of a padded image (a view)."""
        y, x = self.windows()[index]
        return padded[y : y + self.input_size, x : x + self.input_size]
