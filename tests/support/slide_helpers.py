"""Helpers for the slide-mode tests: an in-memory slide with `hovernet.io.wsi.Slide`'s methods,
a simple tissue function, and images with known nuclei."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class ArraySlide:
    """A slide over an RGB array at `mpp` (level 0); reads at `mpp * k` for integer k >= 1."""

    def __init__(self, path: Path, image: np.ndarray, mpp: float = 0.25, magnification=40.0):
        self.path = Path(path)
        self.image = image
        self.mpp = mpp
        self.magnification = magnification
        self.dimensions = (image.shape[1], image.shape[0])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def _factor(self, mpp: float) -> int:
        k = round(mpp / self.mpp)
        assert k >= 1 and abs(k * self.mpp - mpp) < 1e-9, (mpp, self.mpp)
        return k

    def size_at(self, mpp: float) -> tuple[int, int]:
        k = self._factor(mpp)
        return self.dimensions[0] // k, self.dimensions[1] // k

    def read(self, x: int, y: int, w: int, h: int, mpp: float) -> np.ndarray:
        k = self._factor(mpp)
        level = self.image[::k, ::k] if k > 1 else self.image
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = level.shape[:2]
        x0, y0, x1, y1 = max(0, x), max(0, y), min(W, x + w), min(H, y + h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = level[y0:y1, x0:x1]
        return out

    def thumbnail(self, max_side: int = 2048):
        k = max(1, int(np.ceil(max(self.dimensions) / max_side)))
        return np.ascontiguousarray(self.image[::k, ::k]), self.mpp * k


def dark_tissue(slide, name, config):
    """Tissue = thumbnail pixels darker than 230 (what the real mask does on white glass)."""
    thumb, thumb_mpp = slide.thumbnail(512)
    mask = thumb.mean(axis=2) < 230
    return thumb, thumb_mpp, mask, thumb_mpp


def disk_image(shape, centres, radius=7, background=255, ink=40) -> np.ndarray:
    """White image with dark disks at (x, y) centres: nuclei whose answer is known. The disks
    are faintly coloured (channels ink + 4, ink - 4, ink: the mean, darkness, is `ink`) so
    that the image is not greyscale, which H&E readers refuse."""
    image = np.full((*shape, 3), background, np.uint8)
    for x, y in centres:
        cv2.circle(image, (int(x), int(y)), radius, (ink + 4, ink - 4, ink), -1)
    return image


def imports_torch(module: str) -> bool:
    """Whether importing `module` leaves torch imported in this process (run in a worker)."""
    import importlib
    import sys

    importlib.import_module(module)
    return "torch" in sys.modules
