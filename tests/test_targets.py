"""HV/NP targets: exact agreement with the original's reference and a per-instance oracle."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import tifffile
from conftest import DATA, REFERENCE, REPO

import hovernet
from hovernet.data.targets import hv_targets
from hovernet.errors import HoverNetError


def _loop_oracle():
    spec = importlib.util.spec_from_file_location(
        "bench_targets", REPO / "benchmarks/bench_targets.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.loop_hv_targets


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE / "targets.npz")


@pytest.fixture(scope="module")
def monuseg_label():
    path = DATA / "monuseg/labels/TCGA-CH-5767-01Z-00-DX1_inst.tif"
    return tifffile.imread(path).astype(np.int32)


@pytest.mark.parametrize("size", [80, 164])
@pytest.mark.parametrize("legacy_edge", [False, True])
def test_matches_original_reference_exactly(reference, size, legacy_edge):
    hv, np_map = hv_targets(reference["inst_540"], (size, size), legacy_edge=legacy_edge)
    assert hv.dtype == np.float32 and hv.shape == (size, size, 2)
    np.testing.assert_array_equal(hv, reference[f"hv_{size}"])
    np.testing.assert_array_equal(np_map, reference[f"np_{size}"])


def test_public_api_is_the_same_function():
    assert hovernet.hv_targets is hv_targets


@pytest.mark.parametrize("window", [(0, 0, 300, 300), (350, 500, 270, 270), (700, 100, 300, 256)])
def test_legacy_mode_equals_per_instance_loop_on_real_labels(monuseg_label, window):
    # the full output size keeps nuclei at every edge in play, including the top/left quirk
    y, x, h, w = window
    inst = monuseg_label[y : y + h, x : x + w]
    oracle = _loop_oracle()
    for out in [(h, w), (h - 21, w - 40)]:
        ref_hv, ref_np = oracle(inst, out)
        hv, np_map = hv_targets(inst, out, legacy_edge=True)
        np.testing.assert_array_equal(hv, ref_hv)
        np.testing.assert_array_equal(np_map, ref_np)


def test_edge_fix_changes_only_nuclei_at_top_left_edge(monuseg_label):
    inst = monuseg_label[:300, :300]
    fixed, _ = hv_targets(inst, inst.shape)
    legacy, _ = hv_targets(inst, inst.shape, legacy_edge=True)
    rows = np.nonzero(inst)[0]
    cols = np.nonzero(inst)[1]
    ids = inst[rows, cols]
    first_row = np.full(inst.max() + 1, 10**9)
    first_col = np.full(inst.max() + 1, 10**9)
    np.minimum.at(first_row, ids, rows)
    np.minimum.at(first_col, ids, cols)
    edge_ids = np.flatnonzero((first_row < 2) | (first_col < 2))
    assert edge_ids.size >= 3  # this crop has nuclei cut by the top and left edges
    differ = np.any(fixed != legacy, axis=-1)
    assert np.isin(inst[differ], edge_ids).all()
    assert np.all(legacy[np.isin(inst, edge_ids)] == 0)
    # the fixed target is what a map with more room above/left gives: pad, compute, cut back
    padded = np.pad(inst, ((5, 0), (5, 0)))
    wider, _ = hv_targets(padded, padded.shape, legacy_edge=True)
    np.testing.assert_array_equal(fixed, wider[5:, 5:])


def test_offsets_span_minus_one_to_one_per_side():
    inst = np.zeros((40, 40), np.int32)
    inst[10:21, 5:30] = 7  # 11 x 25 rectangle
    hv, np_map = hv_targets(inst, (40, 40))
    assert np_map.sum() == 11 * 25
    h_row = hv[15, 5:30, 0]
    # left edge -1, right edge +1, increasing monotonically, constant down a column
    assert h_row[0] == -1 and h_row[-1] == 1 and np.all(np.diff(h_row) > 0)
    np.testing.assert_array_equal(hv[10:21, 5:30, 0], np.tile(h_row, (11, 1)))
    v_col = hv[10:21, 12, 1]
    assert v_col[0] == -1 and v_col[-1] == 1 and np.all(np.diff(v_col) > 0)
    assert np.all(hv[np_map == 0] == 0)


def test_split_pieces_and_small_nuclei():
    inst = np.zeros((60, 60), np.int32)
    inst[5:15, 5:15] = 1
    inst[40:50, 40:50] = 1  # same id, second piece: its own instance
    inst[30:34, 5:9] = 2  # 16 px < 30: no HV target, still nucleus
    hv, np_map = hv_targets(inst, (60, 60))
    assert hv[5:15, 5:15, 0].min() == -1 and hv[5:15, 5:15, 0].max() == 1
    assert hv[40:50, 40:50, 0].min() == -1 and hv[40:50, 40:50, 0].max() == 1
    assert np.all(hv[30:34, 5:9] == 0) and np.all(np_map[30:34, 5:9] == 1)
    empty_hv, empty_np = hv_targets(np.zeros((30, 30), np.uint16), (10, 10))
    assert not empty_hv.any() and not empty_np.any()


@pytest.mark.parametrize(
    "inst, out, match",
    [
        (np.zeros((10, 10, 2), np.int32), (5, 5), "2-D"),
        (np.zeros((10, 10), np.float32), (5, 5), "integer"),
        (np.zeros((10, 10), np.int32), (12, 5), "fit inside"),
        (-np.ones((10, 10), np.int32), (5, 5), "negative"),
    ],
)
def test_bad_input_gives_clear_error(inst, out, match):
    with pytest.raises(HoverNetError, match=match):
        hv_targets(inst, out)
