"""Post-processing against the original's outputs in ../shared/reference, plus the fixes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DATA, REFERENCE
from scipy import ndimage

from hovernet.errors import HoverNetError
from hovernet.infer.postprocess import (
    PostprocessParams,
    hv_watershed,
    instance_records,
    postprocess,
)

CASES = [f"untyped_{i}" for i in range(3)] + [f"typed_{i}" for i in range(16)]


def _load(case: str) -> tuple[dict, dict]:
    arrays = dict(np.load(REFERENCE / f"postproc_{case}.npz"))
    records = json.loads((REFERENCE / f"postproc_{case}.json").read_text())
    return arrays, records


def _id_mapping(ours: np.ndarray, theirs: np.ndarray) -> dict[int, int]:
    """{their id: our id} if the two label maps are identical up to renumbering, else fail."""
    assert ours.shape == theirs.shape
    assert np.array_equal(ours == 0, theirs == 0), "foreground differs"
    pairs = np.unique(np.stack([theirs[theirs > 0], ours[theirs > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], "one of their nuclei split in ours"
    assert len(np.unique(pairs[1])) == pairs.shape[1], "two of their nuclei merged in ours"
    return {int(t): int(o) for t, o in pairs.T}


@pytest.mark.parametrize("case", CASES)
def test_reproduces_original(case: str) -> None:
    arrays, expected = _load(case)
    nr_types = 5 if case.startswith("typed") else None
    inst_map, nuclei = postprocess(arrays["pred_map"], nr_types=nr_types)

    assert inst_map.dtype == np.int32
    mapping = _id_mapping(inst_map, arrays["pred_inst"])
    # ids are contiguous 1..N and every nucleus in the map has a record
    assert sorted(nuclei) == list(range(1, len(nuclei) + 1))
    assert set(np.unique(inst_map)[1:]) == set(nuclei)
    assert len(nuclei) == len(expected)

    for their_id, ref in expected.items():
        got = nuclei[mapping[int(their_id)]]
        assert got["bbox"] == ref["bbox"]
        assert got["contour"] == ref["contour"]
        np.testing.assert_allclose(got["centroid"], ref["centroid"], rtol=0, atol=1e-6)
        assert got["type"] == ref["type"]
        if ref["type_prob"] is None:
            assert got["type_prob"] is None
        else:
            assert got["type_prob"] == pytest.approx(ref["type_prob"], abs=1e-9)
        assert "type_probs" not in got


@pytest.mark.parametrize("case", ["untyped_0", "typed_3"])
def test_maps_at_40x_keep_the_original_constants(case: str) -> None:
    arrays, _ = _load(case)
    nr_types = 5 if case.startswith("typed") else None
    plain, _ = postprocess(arrays["pred_map"], nr_types)
    at_40x, _ = postprocess(arrays["pred_map"], nr_types, mpp=0.25)
    assert np.array_equal(plain, at_40x)
    assert PostprocessParams.for_mpp(None) == PostprocessParams.for_mpp(0.25)
    assert PostprocessParams.for_mpp(0.25) == PostprocessParams(10, 21, 5)


def test_constants_scale_with_resolution() -> None:
    assert PostprocessParams.for_mpp(0.5) == PostprocessParams(3, 11, 3)  # 20x
    assert PostprocessParams.for_mpp(1.0) == PostprocessParams(1, 5, 1)  # 10x
    assert PostprocessParams.for_mpp(0.125).sobel_ksize == 31  # OpenCV's largest Sobel
    with pytest.raises(HoverNetError, match="positive"):
        PostprocessParams.for_mpp(0.0)


def test_scaled_constants_find_the_small_nuclei_of_a_20x_model() -> None:
    """The bundled 0.5 um/px model on CoNSeP crops it never trained on (a validation tile):
    the 40x constants (5 x 5 marker opening, 21 x 21 Sobel) lose many of the small nuclei."""
    import cv2
    import tifffile

    from hovernet.infer.predict import predict_maps
    from hovernet.metrics import instance_stats
    from hovernet.model.checkpoints import load_model
    from hovernet.model.inference import prepare_for_inference

    model = prepare_for_inference(load_model(None))
    folder = DATA / "consep_train_patches"
    pq = {None: [], 0.5: []}
    for k in range(16):  # the whole validation tile: 4 crops are too few to compare
        name = f"train_12_{k:03d}"
        image = cv2.cvtColor(cv2.imread(str(folder / "images" / f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        true = tifffile.imread(folder / "labels" / f"{name}_inst.tif")
        maps = predict_maps(model, cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA))
        for mpp in pq:
            inst, _ = postprocess(maps.pred_map, 5, maps.type_softmax, mpp=mpp)
            up = cv2.resize(inst.astype(np.float32), (256, 256), interpolation=cv2.INTER_NEAREST)
            pq[mpp].append(instance_stats(true, up.astype(np.int32)).pq)
    assert np.mean(pq[0.5]) > np.mean(pq[None]) + 0.05, pq


def test_type_softmax_gives_mean_class_probabilities() -> None:
    arrays, _ = _load("typed_3")
    pred_map = arrays["pred_map"]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=pred_map.shape[:2] + (5,))
    logits[..., :] += 4.0 * np.eye(5)[pred_map[..., 0].astype(int)]
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    base_map, base = postprocess(pred_map, nr_types=5)
    inst_map, nuclei = postprocess(pred_map, nr_types=5, type_softmax=softmax)
    assert np.array_equal(inst_map, base_map)
    for nid, rec in nuclei.items():
        expected = softmax[inst_map == nid].mean(axis=0)
        np.testing.assert_allclose(rec["type_probs"], expected, rtol=1e-9)
        assert {k: v for k, v in rec.items() if k != "type_probs"} == base[nid]


def test_three_channel_map_with_softmax_votes_on_its_argmax() -> None:
    arrays, _ = _load("typed_5")
    pred_map = arrays["pred_map"]
    onehot = np.eye(5)[pred_map[..., 0].astype(int)]
    _, typed = postprocess(pred_map, nr_types=5)
    _, from_softmax = postprocess(pred_map[..., 1:], nr_types=5, type_softmax=onehot)
    for nid, rec in typed.items():
        assert from_softmax[nid]["type"] == rec["type"]
        assert from_softmax[nid]["type_prob"] == rec["type_prob"]
        assert np.argmax(from_softmax[nid]["type_probs"][1:]) + 1 == rec["type"] or rec["type"] == 0


def test_vote_prefers_any_type_over_background() -> None:
    inst = np.zeros((12, 12), np.int32)
    inst[2:8, 2:8] = 1  # 36 px: 20 background votes, 10 type 3, 6 type 2
    inst[9:12, 0:12] = 2  # 36 px all type 0 -> type 0
    types = np.zeros_like(inst)
    types[2:4, 2:7] = 3  # 10 px
    types[6:7, 2:8] = 2  # 6 px
    _, nuclei = instance_records(inst, types)
    assert nuclei[1]["type"] == 3
    assert nuclei[1]["type_prob"] == pytest.approx(10 / 36)
    assert nuclei[2]["type"] == 0
    assert nuclei[2]["type_prob"] == pytest.approx(1.0)


def test_vote_tie_goes_to_lower_type_id() -> None:
    inst = np.zeros((10, 10), np.int32)
    inst[1:9, 1:9] = 7
    types = np.zeros_like(inst)
    types[1:5, 1:9] = 4
    types[5:9, 1:9] = 2
    _, nuclei = instance_records(inst, types)
    assert nuclei[1]["type"] == 2
    assert nuclei[1]["type_prob"] == pytest.approx(0.5)


def test_ids_become_contiguous_and_unrecordable_nuclei_leave_the_map() -> None:
    inst = np.zeros((30, 30), np.int32)
    inst[2:10, 2:10] = 4
    inst[15, 5:25] = 9  # a 1-pixel line: 2 contour points, the original drops its record
    inst[20:28, 20:28] = 12
    new_map, nuclei = instance_records(inst)
    assert sorted(nuclei) == [1, 2]
    assert np.array_equal(np.unique(new_map), [0, 1, 2])
    assert (new_map[15, 5:25] == 0).all()
    assert (new_map[2:10, 2:10] == 1).all() and (new_map[20:28, 20:28] == 2).all()
    assert nuclei[1]["bbox"] == [[2, 2], [10, 10]]
    assert nuclei[2]["centroid"] == [23.5, 23.5]
    assert nuclei[1]["contour"] == [[2, 2], [2, 9], [9, 9], [9, 2]]


def test_watershed_splits_touching_nuclei_on_real_targets() -> None:
    arrays, _ = _load("untyped_1")
    pred_map = arrays["pred_map"]
    labels = hv_watershed(pred_map[..., 0], pred_map[..., 1], pred_map[..., 2])
    # the HV split must separate touching nuclei: some foreground blobs hold several labels
    blobs = ndimage.label(labels > 0)[0]
    pairs = np.unique(np.stack([blobs[labels > 0], labels[labels > 0]]), axis=1)
    labels_per_blob = np.bincount(pairs[0])
    assert (labels_per_blob >= 2).sum() >= 5


def test_empty_map_gives_no_nuclei() -> None:
    pred_map = np.zeros((64, 64, 3), np.float32)
    pred_map[..., 1:] = np.random.default_rng(1).normal(size=(64, 64, 2))
    inst_map, nuclei = postprocess(pred_map)
    assert nuclei == {} and not inst_map.any()


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        ((32, 32), {}),
        ((32, 32, 5), {}),
        ((32, 32, 3), {"nr_types": 4}),
        ((32, 32, 4), {"type_softmax": np.zeros((16, 16, 4))}),
        ((32, 32, 4), {"nr_types": 5, "type_softmax": np.zeros((32, 32, 4))}),
    ],
)
def test_bad_input_raises_clear_error(shape: tuple, kwargs: dict) -> None:
    with pytest.raises(HoverNetError):
        postprocess(np.zeros(shape, np.float32), **kwargs)
