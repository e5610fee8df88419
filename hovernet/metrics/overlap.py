"""One contingency table per image pair: the overlap of every true and predicted instance.

Every instance metric (Dice, AJI, AJI+, DQ/SQ/PQ) is a function of the areas of the instances
and of the pixel counts of the overlapping (true, pred) pairs. `overlap()` gets all of them
in a few passes over the image with `np.bincount`, instead of one full-image mask per nucleus
(see benchmarks/bench_metrics.py for the speed-up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hovernet.errors import HoverNetError

# dense bincount over all (true, pred) index pairs below this many cells, np.unique above
_DENSE_PAIR_LIMIT = 1 << 22


def as_label_map(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Check that `labels` is a 2-D map of non-negative integer ids (0 = background).

    Integer and boolean arrays pass through; float arrays holding whole numbers (as MATLAB
    writes them) are converted. Anything else raises HoverNetError naming `name`.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise HoverNetError(
            f"{name}: expected a 2-D instance map (H x W), got an array of shape {arr.shape}; "
            "pass one channel (the instance ids)"
        )
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise HoverNetError(
                f"{name}: labels must be whole numbers (instance ids), got non-integer "
                f"{arr.dtype} values; pass an instance map, not probabilities"
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise HoverNetError(f"{name}: labels must be integers, got dtype {arr.dtype}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise HoverNetError(f"{name}: labels must be >= 0 (0 = background), found {arr.min()}")
    return arr


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (ids, index, areas): the sorted non-zero ids, each pixel's 1-based position in
    `ids` (0 = background, flattened) and the pixel count of each id."""
    flat = labels.ravel()
    if flat.dtype == np.uint64:
        flat = flat.astype(np.int64)
    max_id = int(flat.max()) if flat.size else 0
    if max_id <= 4 * flat.size + 1024:
        counts = np.bincount(flat, minlength=max_id + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        lut = np.zeros(max_id + 1, dtype=np.int32 if len(ids) < 2**31 - 1 else np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        return ids, lut[flat], counts[ids].astype(np.int64)
    # very sparse ids (hashes, huge offsets): sort instead of a lookup table
    uniq, index, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if uniq[0] == 0:
        return uniq[1:], index, counts[1:].astype(np.int64)
    return uniq, index + 1, counts.astype(np.int64)


@dataclass(frozen=True)
class Overlap:
    """Instance areas and the overlapping (true, pred) pairs of one image pair.

    `rows`/`cols` index `true_ids`/`pred_ids` (0-based) and are sorted by (row, col);
    `inter` is the pixel count of each overlapping pair (always > 0).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    inter: np.ndarray

    @property
    def n_true(self) -> int:
        return len(self.true_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)

    @property
    def union(self) -> np.ndarray:
        return self.true_area[self.rows] + self.pred_area[self.cols] - self.inter

    @property
    def iou(self) -> np.ndarray:
        """Exact IoU of each overlapping pair (as the original's PQ)."""
        return self.inter / self.union


def overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Contingency table of two instance maps of the same shape (ids need not be contiguous)."""
    true = as_label_map(true, "true")
    pred = as_label_map(pred, "pred")
    if true.shape != pred.shape:
        raise HoverNetError(
            f"true and pred differ in shape: {true.shape} vs {pred.shape}; "
            "compare maps of the same image at the same resolution"
        )
    t_ids, t_idx, t_area = compact_labels(true)
    p_ids, p_idx, p_area = compact_labels(pred)
    n_pred = len(p_ids)
    both = (t_idx > 0) & (p_idx > 0)
    key = (t_idx[both].astype(np.int64) - 1) * n_pred + (p_idx[both] - 1)
    if len(t_ids) * n_pred <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(key, minlength=len(t_ids) * n_pred)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(key, return_counts=True)
    rows, cols = np.divmod(keys, max(n_pred, 1))
    return Overlap(t_ids, p_ids, t_area, p_area, rows, cols, inter.astype(np.int64))


def unique_pairing(ov: Overlap, score: np.ndarray) -> np.ndarray:
    """Maximum-score one-to-one pairing of the overlapping pairs (Hungarian algorithm).

    Returns the positions (into ov.rows/cols) of the chosen pairs. The overlap graph is cut into
    connected components first, so each assignment problem is tiny; the optimum is the same as
    one dense assignment over all instances (only exact ties may resolve differently).
    """
    n_pairs = len(ov.rows)
    if n_pairs == 0:
        return np.zeros(0, dtype=np.int64)
    n_true = ov.n_true
    graph = coo_matrix(
        (np.ones(n_pairs, dtype=np.int8), (ov.rows, ov.cols + n_true)),
        shape=(n_true + ov.n_pred, n_true + ov.n_pred),
    )
    _, node_comp = connected_components(graph, directed=False)
    comp = node_comp[ov.rows]
    size = np.bincount(comp)
    chosen = [np.flatnonzero(size[comp] == 1)]  # a lone pair is its own best pairing
    multi = np.flatnonzero(size[comp] > 1)
    if len(multi):
        multi = multi[np.argsort(comp[multi], kind="stable")]
        bounds = np.flatnonzero(np.diff(comp[multi])) + 1
        for group in np.split(multi, bounds):
            r_ids, r_loc = np.unique(ov.rows[group], return_inverse=True)
            c_ids, c_loc = np.unique(ov.cols[group], return_inverse=True)
            block = np.zeros((len(r_ids), len(c_ids)))
            block[r_loc, c_loc] = score[group]
            where = np.full(block.shape, -1, dtype=np.int64)
            where[r_loc, c_loc] = group
            r, c = linear_sum_assignment(-block)
            picked = where[r, c]
            chosen.append(picked[(picked >= 0) & (block[r, c] > 0)])
    return np.sort(np.concatenate(chosen))
