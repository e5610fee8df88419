"""GeoJSON outlines are in pixel corners (QuPath): label map -> records -> GeoJSON -> the
project's own GeoJSON reader gives back each nucleus' pixels (real MoNuSeg labels)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DATA

from hovernet.infer.measure import mask_outline, nucleus_measurements
from hovernet.infer.postprocess import instance_records
from hovernet.io.annotations import read_qupath_geojson
from hovernet.io.writers import write_geojson

LABELS = sorted((DATA / "monuseg" / "labels").glob("*_inst.tif"))


@pytest.mark.parametrize("index", [0, 3])
def test_monuseg_labels_survive_the_geojson_round_trip(tmp_path, index):
    inst = tifffile.imread(LABELS[index]).astype(np.int32)
    inst_map, nuclei = instance_records(inst)
    path = tmp_path / "qupath" / "tile.geojson"
    write_geojson(path, nuclei, None, nucleus_measurements(inst_map, nuclei))
    labels = read_qupath_geojson(path, inst_map.shape)
    back = labels.read_rows(0, labels.height)
    assert labels.n_instances == len(nuclei) > 300
    ids = list(nuclei)  # feature k (1-based in the reader) is nucleus ids[k - 1]
    mapped = np.zeros(back.max() + 1, np.int64)
    mapped[1:] = ids
    back = mapped[back]
    sizes = np.bincount(inst_map.ravel(), minlength=max(ids) + 1)
    kept = np.bincount(inst_map[back == inst_map].ravel(), minlength=len(sizes))
    share = kept[ids] / sizes[ids]
    assert share.min() >= 0.99, (ids[int(np.argmin(share))], share.min())
    # and nothing outside the nuclei is added
    assert not np.any((back > 0) & (inst_map == 0))


def test_outline_is_the_pixel_squares_boundary():
    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    (ring,) = mask_outline(one)
    assert _rotated_to_min(ring) == [(3, 2), (4, 2), (4, 3), (3, 3)]  # counter-clockwise in x, y
    ell = np.zeros((4, 4), bool)
    ell[0:3, 0] = True
    ell[2, 0:3] = True
    ring = mask_outline(ell, offset=(10, 20))[0]
    assert sorted(ring) == sorted([(10, 20), (11, 20), (11, 22), (13, 22), (13, 23), (10, 23)])
    inst = np.zeros((6, 6), np.int32)
    inst[1:3, 1:4] = 7
    shapes = nucleus_measurements(inst, [7, 9])
    assert _rotated_to_min(shapes[7]["outline"][0]) == [(1, 1), (4, 1), (4, 3), (1, 3)]
    assert shapes[9]["outline"] == [] and np.isnan(shapes[9]["area"])


def _rotated_to_min(ring: list) -> list:
    start = ring.index(min(ring))
    return ring[start:] + ring[:start]
