"""The faster steps of the post-processing against the library calls they replace, on real maps:
each must give exactly the same pixels (tests/test_postprocess.py compares the whole result with
the original's outputs)."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import tifffile
from conftest import DATA, REFERENCE
from scipy import ndimage
from skimage.segmentation import watershed

from hovernet.errors import HoverNetError
from hovernet.infer.postprocess import (
    PostprocessParams,
    _fill_holes,
    _foreground,
    _remove_small,
    _watershed_in_box,
    hv_watershed,
    instance_records,
    postprocess,
)

CASES = ["untyped_0", "untyped_2", "typed_3", "typed_15"]


def _maps(case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred_map = np.load(REFERENCE / f"postproc_{case}.npz")["pred_map"]
    channels = pred_map[..., 1:] if case.startswith("typed") else pred_map
    return channels[..., 0], channels[..., 1], channels[..., 2]


def _real_masks() -> list[np.ndarray]:
    """Masks with holes, touching the edges, from real annotations and reference maps."""
    masks = []
    for case in CASES:
        prob, _, _ = _maps(case)
        masks.append(prob >= 0.5)
    inst = tifffile.imread(sorted((DATA / "monuseg" / "labels").glob("*_inst.tif"))[4])
    boundaries = cv2.morphologyEx((inst > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3)))
    masks.append(boundaries > 0)  # rings: many enclosed holes
    masks.append(ndimage.binary_erosion(inst > 0))
    return masks


def test_fill_holes_equals_scipy() -> None:
    n_holes = 0
    for mask in _real_masks():
        expected = ndimage.binary_fill_holes(mask)
        assert np.array_equal(_fill_holes(mask), expected)
        n_holes += int((expected & ~mask).sum())
    assert n_holes > 1000


@pytest.mark.parametrize("min_size", [1, 3, 10, 40])
def test_foreground_equals_label_and_size_filter(min_size: int) -> None:
    for mask in _real_masks():
        expected = _remove_small(ndimage.label(mask)[0], min_size) > 0
        assert np.array_equal(_foreground(mask, min_size), expected)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mpp", [None, 0.5])
def test_watershed_in_box_equals_whole_map(case: str, mpp: float | None) -> None:
    """Markers and energy as hv_watershed makes them; the foreground moved into a corner of a
    larger empty map so that the box is a small part of it."""
    prob, h_map, v_map = _maps(case)
    labels = hv_watershed(prob, h_map, v_map, PostprocessParams.for_mpp(mpp))
    fg = labels > 0
    energy = -cv2.GaussianBlur(np.where(fg, np.hypot(h_map, v_map), 0.0), (3, 3), 0)
    markers = _remove_small(ndimage.label(ndimage.binary_erosion(fg, iterations=2))[0], 3)
    big = [np.zeros((700, 900), a.dtype) for a in (energy, markers, fg)]
    for a, b in zip(big, (energy, markers, fg), strict=True):
        a[150 : 150 + b.shape[0], 300 : 300 + b.shape[1]] = b
    expected = watershed(big[0], markers=big[1], mask=big[2])
    got = _watershed_in_box(*big)
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    assert len(np.unique(got)) > 5
    assert not _watershed_in_box(energy, markers, np.zeros_like(fg)).any()


def test_records_take_statistics_from_nuclei_pixels_only() -> None:
    """A map whose background is most of the pixels: the records equal those of the same map
    cropped to its nuclei (centroids shifted), type votes and mean softmax included."""
    prob, h_map, v_map = _maps("typed_3")
    labels = hv_watershed(prob, h_map, v_map)
    rng = np.random.default_rng(0)
    types = rng.integers(0, 5, labels.shape)
    softmax = rng.dirichlet(np.ones(5), labels.shape)
    big_labels = np.zeros((900, 800), np.int32)
    big_types = rng.integers(0, 5, big_labels.shape)
    big_softmax = rng.dirichlet(np.ones(5), big_labels.shape)
    at = (slice(500, 500 + labels.shape[0]), slice(100, 100 + labels.shape[1]))
    big_labels[at], big_types[at], big_softmax[at] = labels, types, softmax
    small_map, small = instance_records(labels, types, softmax)
    big_map, big = instance_records(big_labels, big_types, big_softmax)
    assert np.array_equal(big_map[at], small_map) and big_map.sum() == small_map.sum()
    assert list(big) == list(small) and len(big) > 20
    for nid, rec in small.items():
        other = big[nid]
        assert other["type"] == rec["type"] and other["type_prob"] == rec["type_prob"]
        assert other["type_probs"] == rec["type_probs"]
        assert other["centroid"] == pytest.approx(
            [rec["centroid"][0] + 100, rec["centroid"][1] + 500], abs=1e-9
        )
        # the original's centroid: cv2.moments of the cropped nucleus
        (r0, c0), (r1, c1) = other["bbox"]
        m = cv2.moments((big_labels[r0:r1, c0:c1] == nid).astype(np.uint8))
        assert other["centroid"] == [m["m10"] / m["m00"] + c0, m["m01"] / m["m00"] + r0]


def test_remove_small_equals_whole_map_bincount() -> None:
    inst = tifffile.imread(sorted((DATA / "consep_patches" / "labels").glob("*_inst.tif"))[0])
    for labels in (inst.astype(np.int32), np.zeros((9, 7), np.int32), np.ones((3, 3), np.int32)):
        for min_size in (1, 10, 60, 10**6):
            expected = labels.copy()
            sizes = np.bincount(expected.ravel())
            small = sizes < min_size
            small[0] = False
            expected[small[expected]] = 0
            assert np.array_equal(_remove_small(labels.copy(), min_size), expected)


def test_thresholds_are_parameters_with_the_original_defaults() -> None:
    """The foreground and marker thresholds come from the parameters: the defaults give the
    original's labels, a stricter foreground threshold a smaller foreground inside the
    original's, another marker threshold other nuclei in the same foreground; `postprocess`
    takes them in place of its resolution's constants; bad values are refused."""
    prob, h_map, v_map = _maps("typed_3")
    params = PostprocessParams.for_mpp(None)
    assert (params.foreground_threshold, params.marker_threshold) == (0.5, 0.4)
    base = hv_watershed(prob, h_map, v_map, params)
    assert np.array_equal(base, hv_watershed(prob, h_map, v_map))
    strict = hv_watershed(prob, h_map, v_map, replace(params, foreground_threshold=0.8))
    assert (strict > 0).sum() < (base > 0).sum() and not ((strict > 0) & (base == 0)).any()
    assert not ((strict > 0) & ~_foreground(prob >= 0.8, params.min_object_size)).any()
    cut = hv_watershed(prob, h_map, v_map, replace(params, marker_threshold=0.6))
    fg = _foreground(prob >= 0.5, params.min_object_size)
    assert not ((cut > 0) & ~fg).any() and len(np.unique(cut)) != len(np.unique(base))
    # postprocess takes them too, in place of the constants its mpp would give
    stacked = np.stack([prob, h_map, v_map], axis=-1)
    inst, _ = postprocess(stacked, mpp=0.5, params=replace(params, foreground_threshold=0.8))
    assert np.array_equal(inst, instance_records(strict)[0])
    for bad in ({"foreground_threshold": 1.0}, {"marker_threshold": 0.0}, {"sobel_ksize": 4}):
        with pytest.raises(HoverNetError):
            replace(params, **bad)
