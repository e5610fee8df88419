"""Nuclei per mm^2 of tissue, per class, on a square grid in microns (slide mode's density maps).

`density_maps(xy, types, n_types, mask, mask_mpp, DensityGrid(dimensions, slide_mpp, grid_um))`
is pure:

- The grid starts at the slide's level-0 origin (0, 0); its cells are `grid_um` microns square,
  `grid_um / slide_mpp` level-0 pixels; the last row and column stop at the slide's edge.
- A nucleus counts in the cell that holds its centroid (level-0 pixels).
- A cell's tissue is the area of the tissue mask inside it: mask pixel (r, c) covers the square
  [c, c + 1) x [r, r + 1) times `mask_mpp / slide_mpp` level-0 pixels; a pixel the cell's edge
  cuts counts by the share inside (exact, from the mask's running sums).
- density = nuclei in the cell / tissue in the cell (mm^2), where the tissue covers at least
  `min_fraction` of a whole cell's area (default 10 %); elsewhere NaN, and the cell's nuclei are
  counted in no band (a sliver of tissue would give huge numbers).

Bands, in order: one per type 0 .. n_types - 1 (band k is type k; type 0 is "unclassified"),
then "total" (every nucleus whatever its type, untyped ones included), then "tissue_mm2" (each
cell's tissue area, also where the densities are NaN). So density x tissue_mm2 gives counts back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_TISSUE_FRACTION = 0.1  # share of a whole cell's area below which a cell's density is NaN
TOTAL, TISSUE = "total", "tissue_mm2"


def grid_shape(dimensions: tuple[int, int], cell_px: float) -> tuple[int, int]:
    """(rows, cols) of cells `cell_px` level-0 pixels square over a slide of (width, height)."""
    width, height = dimensions
    return max(1, math.ceil(height / cell_px)), max(1, math.ceil(width / cell_px))


def cell_counts(
    xy: np.ndarray, types: np.ndarray, n_types: int, cell_px: float, shape: tuple[int, int]
) -> np.ndarray:
    """Centroids counted per cell: (n_types + 1, rows, cols) int64, the last plane every nucleus
    (types outside 0 .. n_types - 1, e.g. -1 for untyped, count there only)."""
    rows, cols = shape
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    types = np.asarray(types, np.int64).reshape(-1)
    col = np.clip(np.floor(xy[:, 0] / cell_px), 0, cols - 1).astype(np.int64)
    row = np.clip(np.floor(xy[:, 1] / cell_px), 0, rows - 1).astype(np.int64)
    cell = row * cols + col
    out = np.zeros((n_types + 1, rows * cols), np.int64)
    for t in range(n_types):
        out[t] = np.bincount(cell[types == t], minlength=rows * cols)
    out[n_types] = np.bincount(cell, minlength=rows * cols)
    return out.reshape(n_types + 1, rows, cols)


def _at(running: np.ndarray, edges: np.ndarray, axis: int) -> np.ndarray:
    """Running sums (n + 1 along `axis`, first 0) read at fractional `edges` in [0, n]: linear
    between whole pixels, which is exact for a mask that is constant over each pixel."""
    n = running.shape[axis] - 1
    lo = np.minimum(np.floor(edges).astype(np.int64), max(n - 1, 0))
    frac = edges - lo
    a, b = np.take(running, lo, axis=axis), np.take(running, np.minimum(lo + 1, n), axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    frac = frac.reshape(shape)
    return a * (1 - frac) + b * frac


def cell_tissue_mm2(
    mask: np.ndarray, mask_mpp: float, slide_mpp: float, cell_px: float, shape: tuple[int, int]
) -> np.ndarray:
    """Tissue area (mm^2) of each cell of the grid, (rows, cols) float64 (see the module)."""
    mask = np.asarray(mask, bool)
    h, w = mask.shape
    rows, cols = shape
    step = cell_px * slide_mpp / mask_mpp  # a cell's side in mask pixels
    xs = np.clip(np.arange(cols + 1) * step, 0, w)
    ys = np.clip(np.arange(rows + 1) * step, 0, h)
    run_x = np.zeros((h, w + 1), np.int64)
    np.cumsum(mask, axis=1, out=run_x[:, 1:])
    per_col = np.diff(_at(run_x, xs, 1), axis=1)  # (h, cols): tissue pixels per row and cell
    run_y = np.zeros((h + 1, cols))
    np.cumsum(per_col, axis=0, out=run_y[1:])
    pixels = np.diff(_at(run_y, ys, 0), axis=0)  # (rows, cols)
    return np.maximum(pixels, 0) * (mask_mpp * 1e-3) ** 2


@dataclass(frozen=True)
class DensityGrid:
    """The cells of a density map: a slide of level-0 `dimensions` (width, height) at
    `slide_mpp`, cut into cells `grid_um` microns square from its origin; a cell's density is
    counted where its tissue covers at least `min_fraction` of a whole cell (see the module)."""

    dimensions: tuple[int, int]
    slide_mpp: float
    grid_um: float
    min_fraction: float = MIN_TISSUE_FRACTION

    def __post_init__(self) -> None:
        if not self.grid_um > 0 or not self.slide_mpp > 0:
            raise ValueError(f"grid {self.grid_um} um and slide {self.slide_mpp} um/px: both > 0")

    @property
    def cell_px(self) -> float:
        """A cell's side in level-0 pixels."""
        return self.grid_um / self.slide_mpp


def density_maps(
    xy: np.ndarray,
    types: np.ndarray,
    n_types: int,
    mask: np.ndarray,
    mask_mpp: float,
    grid: DensityGrid,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(bands float32 (n_types + 2, rows, cols), geometry) of the nuclei at level-0 centroids
    `xy` (N x 2, x first) with `types` (N; -1 for untyped) on the cells of `grid`, with the
    slide's tissue `mask` at `mask_mpp` (see the module)."""
    if not mask_mpp > 0:
        raise ValueError(f"mask {mask_mpp} um/px: must be > 0")
    grid_um, slide_mpp, dimensions = grid.grid_um, grid.slide_mpp, grid.dimensions
    min_fraction = grid.min_fraction
    cell_px = grid.cell_px
    shape = grid_shape(dimensions, cell_px)
    counts = cell_counts(xy, types, n_types, cell_px, shape)
    tissue = cell_tissue_mm2(mask, mask_mpp, slide_mpp, cell_px, shape)
    full = (grid_um * 1e-3) ** 2
    counted = tissue >= max(min_fraction * full, 1e-12)
    density = np.full(counts.shape, np.nan)
    density[:, counted] = counts[:, counted] / tissue[counted]
    bands = np.concatenate([density, tissue[None]]).astype(np.float32)
    geometry = {
        "bands": [f"type {t}" for t in range(n_types)] + [TOTAL, TISSUE],
        "band_types": [*range(n_types), None, None],
        "units": "nuclei per mm^2 of tissue; tissue_mm2: mm^2",
        "grid_um": float(grid_um),
        "cell_px": float(cell_px),
        "origin_px": [0.0, 0.0],
        "origin_um": [0.0, 0.0],
        "grid_shape": [int(shape[0]), int(shape[1])],  # not "shape": tifffile reads that key
        "slide_mpp": float(slide_mpp),
        "dimensions": [int(dimensions[0]), int(dimensions[1])],
        "mask_mpp": float(mask_mpp),
        "min_tissue_fraction": float(min_fraction),
        "nuclei": int(counts[n_types].sum()),
        "nuclei_counted": int(counts[n_types][counted].sum()),
        "cells_counted": int(counted.sum()),
    }
    return bands, geometry
