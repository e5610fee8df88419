"""Annotation readers against the real files in ../shared/data and their converted labels."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import tifffile
from conftest import DATA
from scipy import ndimage

from hovernet.data.annotated import labels_to_arrays, load_annotated
from hovernet.errors import HoverNetError
from hovernet.io.annotations import (
    CLASS_MERGES,
    read_consep_mat,
    read_imagescope_xml,
    read_label_maps,
    read_mask_folder,
    read_original_patch,
    read_qupath_geojson,
)
from hovernet.io.colour_masks import ColourMaskLabels, EmptyMaskWarning
from hovernet.io.label_options import LabelOptions
from hovernet.io.slides import open_image, read_rgb
from hovernet.io.type_info import load_type_info

SEED = DATA / "seed_format"
MONUSEG_XML = sorted((DATA / "monuseg" / "raw").glob("*/*.xml"))


def _partition_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same instances up to id numbering."""
    if ((a > 0) != (b > 0)).any():
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


# ------------------------------------------------------------------ region reader
@pytest.mark.parametrize(
    "path", [SEED / "slide_a.tif", SEED / "slide_a_mask.png", DATA / "wsi/CMU-1-Small-Region.svs"]
)
def test_open_image_regions_equal_the_full_read(path):
    full = read_rgb(path)
    with open_image(path) as reader:
        assert (reader.height, reader.width) == full.shape[:2]
        for x, y, w, h in [(0, 0, 5, 7), (250, 300, 600, 513), (reader.width - 300, 9, 300, 260)]:
            assert (reader.read_region(x, y, w, h) == full[y : y + h, x : x + w]).all()


def test_open_image_reads_mpp_from_tiff_tags():
    with open_image(SEED / "slide_a.tif") as reader:
        assert reader.mpp == pytest.approx(0.25)


# ------------------------------------------------------------------ MoNuSeg XML, DSB masks
@pytest.mark.parametrize("xml", MONUSEG_XML[::6], ids=lambda p: p.stem)
def test_imagescope_xml_equals_converted_monuseg_labels(xml):
    inst, types = labels_to_arrays(read_imagescope_xml(xml, (1000, 1000)))
    ref = tifffile.imread(DATA / "monuseg" / "labels" / f"{xml.stem}_inst.tif")
    assert types is None
    assert inst.max() == ref.max()
    assert (inst == ref).all()


def test_xml_band_rasterisation_equals_whole():
    labels = read_imagescope_xml(MONUSEG_XML[0], (1000, 1000))
    whole = labels.read_rows(0, 1000)
    bands = np.concatenate([labels.read_rows(y, min(y + 137, 1000)) for y in range(0, 1000, 137)])
    assert (whole == bands).all()


@pytest.mark.parametrize("index", [0, 7, 19])
def test_dsb_mask_folder_equals_converted_labels(index):
    folder = sorted((DATA / "dsb2018_he" / "raw").iterdir())[index]
    inst, _ = labels_to_arrays(read_mask_folder(folder / "masks"))
    ref = tifffile.imread(DATA / "dsb2018_he" / "labels" / f"{folder.name}_inst.tif")
    assert inst.max() == len(list((folder / "masks").iterdir()))
    assert (inst == ref).all()


# ------------------------------------------------------------------ QuPath GeoJSON
def _xml_as_geojson(xml: Path, path: Path, names=("tumour", "immune")) -> list[int]:
    import xml.etree.ElementTree as ET

    features, classes = [], []
    for i, region in enumerate(r for r in ET.parse(xml).getroot().iter("Region")):
        pts = [[float(v.get("X")) + 0.5, float(v.get("Y")) + 0.5] for v in region.iter("Vertex")]
        if len(pts) < 3:
            continue
        cls = 1 + i % 2
        classes.append(cls)
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [pts + [pts[0]]]},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": names[cls - 1]},
                },
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return classes


def test_qupath_geojson_matches_xml_and_maps_class_names(tmp_path):
    xml = MONUSEG_XML[0]
    classes = _xml_as_geojson(xml, tmp_path / "a.geojson")
    info = {0: ("background", (0, 0, 0)), 1: ("Tumour", (255, 0, 0)), 2: ("Immune", (0, 255, 0))}
    labels = read_qupath_geojson(tmp_path / "a.geojson", (1000, 1000), info)
    assert list(labels.inst_type[1:]) == classes
    inst, types = labels_to_arrays(labels)
    ref = tifffile.imread(DATA / "monuseg" / "labels" / f"{xml.stem}_inst.tif")
    assert (inst == ref).all()
    assert set(np.unique(types[inst > 0])) == {1, 2}


def test_qupath_unknown_class_names_are_listed(tmp_path):
    _xml_as_geojson(MONUSEG_XML[0], tmp_path / "b.geojson", names=("tumour", "stroma"))
    info = {0: ("background", (0, 0, 0)), 1: ("tumour", (255, 0, 0))}
    with pytest.raises(HoverNetError, match=r"b\.geojson.*'stroma': \d+ objects"):
        read_qupath_geojson(tmp_path / "b.geojson", (1000, 1000), info)


# ------------------------------------------------------------------ colour masks
@pytest.fixture(scope="module")
def type_info():
    return load_type_info(SEED / "type_info.json")


@pytest.fixture(scope="module")
def slide_a_truth():
    """slide_a's true instances and types, rebuilt from the CoNSeP crops as its README says."""
    labels = DATA / "consep_patches" / "labels"
    names = sorted(
        p.name[: -len("_inst.tif")]
        for p in labels.glob("test_*_inst.tif")
        if p.name.split("_")[1] in {"1", "2", "3", "4", "5", "6", "7"}
    )
    inst = np.zeros((3584, 2048), np.int32)
    types = np.zeros((3584, 2048), np.uint8)
    offset = 0
    for k, name in enumerate(names):
        r, c = (k // 8) * 256, (k % 8) * 256
        crop = tifffile.imread(labels / f"{name}_inst.tif").astype(np.int32)
        inst[r : r + 256, c : c + 256] = np.where(crop > 0, crop + offset, 0)
        types[r : r + 256, c : c + 256] = tifffile.imread(labels / f"{name}_type.tif")
        offset += int(crop.max())
    return inst, types


def test_colour_mask_instances_are_same_class_unions_of_true_nuclei(type_info, slide_a_truth):
    true_inst, true_type = slide_a_truth
    labels = ColourMaskLabels(SEED / "slide_a_mask.png", LabelOptions(type_info, min_size=0))
    inst = labels.read_rows(0, labels.height)
    stats = json.loads((SEED / "stats.json").read_text())["slide_a"]
    colour_cls = np.where(true_type == 2, 2, 1) * (true_inst > 0)  # inflammatory red, rest yellow
    # the mask paints exactly the true nuclei with their class colour
    assert ((inst > 0) == (true_inst > 0)).all()
    assert (labels.inst_type[inst] == colour_cls).all()
    # true counts per class are those of stats.json ...
    ids, first = np.unique(true_inst, return_index=True)
    true_cls = colour_cls.ravel()[first[1:]]
    assert (np.sum(true_cls == 1), np.sum(true_cls == 2)) == (
        stats["nuclei_yellow"],
        stats["nuclei_red"],
    )
    # ... each colour instance is a union of whole true nuclei (touching ones merge) ...
    pairs = np.unique(np.stack([true_inst[true_inst > 0], inst[inst > 0]]), axis=1)
    _, per_true = np.unique(pairs[0], return_counts=True)
    # ... except the true nuclei that are not 8-connected themselves (a colour cannot tell)
    broken = 0
    for i, box in enumerate(ndimage.find_objects(true_inst), start=1):
        if box is not None:
            broken += ndimage.label(true_inst[box] == i, structure=np.ones((3, 3)))[1] > 1
    assert 0 < (per_true > 1).sum() <= broken < 10  # pieces may rejoin via a neighbour
    got = np.bincount(labels.inst_type[1:], minlength=3)
    assert got[1] <= stats["nuclei_yellow"] and got[2] <= stats["nuclei_red"]
    assert got[2] > 0.8 * stats["nuclei_red"]


def test_strip_labelling_equals_whole_image_labelling(type_info):
    mask = read_rgb(SEED / "slide_b_mask.png")
    strips = ColourMaskLabels(
        SEED / "slide_b_mask.png", LabelOptions(type_info, min_size=0), strip_rows=97
    )
    ours = strips.read_rows(0, strips.height)
    whole = np.zeros(mask.shape[:2], np.int64)
    for k, (_, colour) in type_info.items():
        if k:
            lab, n = ndimage.label((mask == colour).all(axis=2), structure=np.ones((3, 3)))
            whole[lab > 0] = lab[lab > 0] + whole.max()
    assert _partition_equal(ours, whole)
    strips.close()


def test_min_size_drops_small_components(type_info):
    small = ColourMaskLabels(SEED / "slide_a_mask.png", LabelOptions(type_info, min_size=0))
    big = ColourMaskLabels(SEED / "slide_a_mask.png", LabelOptions(type_info, min_size=30))
    a, b = small.read_rows(0, 3584), big.read_rows(0, 3584)
    sizes = np.bincount(a.ravel())[1:]
    assert big.n_instances == int((sizes >= 30).sum()) < small.n_instances
    assert (b[b > 0] > 0).all() and ((b > 0) <= (a > 0)).all()


def _crop_pair(tmp_path: Path, suffix=".png", quality=None):
    image = read_rgb(SEED / "slide_a.tif")[:600, :700]
    mask = read_rgb(SEED / "slide_a_mask.png")[:600, :700]
    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])
    args = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, 0x111111]
    args = args if quality else []
    cv2.imwrite(str(tmp_path / f"mask{suffix}"), mask[:, :, ::-1], args)
    return tmp_path / "img.png", tmp_path / f"mask{suffix}", mask


def test_unknown_colours_are_listed_with_counts_and_file(tmp_path, type_info):
    mask = np.zeros((300, 200, 3), np.uint8)
    mask[10:20, 10:20] = (0, 128, 255)
    mask[50:53, 50:55] = (9, 9, 9)
    cv2.imwrite(str(tmp_path / "m.png"), mask[:, :, ::-1])
    with pytest.raises(HoverNetError) as info:
        ColourMaskLabels(tmp_path / "m.png", LabelOptions(type_info), strip_rows=64)
    msg = str(info.value)
    assert "m.png" in msg and "(0, 128, 255): 100 px" in msg and "(9, 9, 9): 15 px" in msg
    assert "--colour-tolerance" in msg


def test_colour_tolerance_snaps_jpeg_masks(tmp_path, type_info):
    img, jpg, exact = _crop_pair(tmp_path, ".jpg", quality=95)  # 4:4:4, no chroma blur
    with pytest.raises(HoverNetError, match="mask.jpg"):
        ColourMaskLabels(jpg, LabelOptions(type_info))
    snapped = ColourMaskLabels(jpg, LabelOptions(type_info, tolerance=127, min_size=0))
    cls = snapped.inst_type[snapped.read_rows(0, 600)]
    truth = np.select([(exact == (255, 255, 0)).all(2), (exact == (255, 0, 0)).all(2)], [1, 2])
    assert (cls == truth).mean() > 0.99


def test_mask_of_another_size_names_both_sizes(tmp_path, type_info):
    cv2.imwrite(str(tmp_path / "m.png"), np.zeros((100, 120, 3), np.uint8))
    with pytest.raises(HoverNetError, match=r"m\.png.*120 x 100.*130 x 100"):
        ColourMaskLabels(tmp_path / "m.png", LabelOptions(type_info), expect_size=(100, 130))


def test_empty_mask_warns(tmp_path, type_info):
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.warns(EmptyMaskWarning, match="empty.png"):
        labels = ColourMaskLabels(tmp_path / "empty.png", LabelOptions(type_info))
    assert labels.n_instances == 0 and not labels.read_rows(0, 64).any()


def test_load_annotated_colour_pair(tmp_path, type_info):
    img, mask_path, mask = _crop_pair(tmp_path)
    ann = load_annotated(img, mask_path, type_info=type_info, min_size=0)
    assert ann.image.shape == (600, 700, 3) and ann.inst.max() == len(np.unique(ann.inst)) - 1
    assert ((ann.type == 2) == (mask == (255, 0, 0)).all(2)).all()


# ------------------------------------------------------------------ instance/type maps, .mat
def test_instance_map_with_gaps_is_relabelled_and_types_voted(tmp_path):
    inst = np.zeros((50, 60), np.uint16)
    inst[1:5, 1:5], inst[10:20, 10:20], inst[30:40, 40:50] = 3, 900, 41
    types = np.zeros_like(inst, np.uint8)
    types[inst == 3], types[inst == 900], types[inst == 41] = 2, 1, 4
    types[10, 10] = 3  # one stray pixel loses the vote
    tifffile.imwrite(tmp_path / "x_inst.tif", inst)
    cv2.imwrite(str(tmp_path / "x_type.png"), types)
    labels = read_label_maps(tmp_path / "x_inst.tif")
    out, out_types = labels_to_arrays(labels)
    assert out.max() == 3 and _partition_equal(out, inst)
    assert list(labels.inst_type) == [0, 2, 4, 1]  # ids in increasing source order: 3, 41, 900
    assert out_types[10, 10] == 1


def test_npy_instance_map_and_rgb_refused(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(12, dtype=np.int32).reshape(3, 4))
    assert read_label_maps(tmp_path / "i.npy").n_instances == 11
    cv2.imwrite(str(tmp_path / "c.png"), np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(HoverNetError, match=r"c\.png.*--format colour"):
        read_label_maps(tmp_path / "c.png")


def test_consep_mat_merges_seven_classes_to_four(tmp_path):
    inst = np.load(DATA / "consep_patches/raw/inst/test/test_10_000.npy")
    ids = np.unique(inst[inst > 0])
    seven = {int(i): 1 + k % 7 for k, i in enumerate(ids)}
    type_map = np.zeros_like(inst)
    for i, t in seven.items():
        type_map[inst == i] = t
    scipy.io.savemat(tmp_path / "c.mat", {"inst_map": inst, "type_map": type_map})
    merged = read_consep_mat(tmp_path / "c.mat", merge="consep")
    raw = read_consep_mat(tmp_path / "c.mat", merge=None)
    assert merged.n_instances == len(ids)
    expect = [CLASS_MERGES["consep"][t] for t in raw.inst_type[1:]]
    assert list(merged.inst_type[1:]) == expect
    assert set(expect) == {1, 2, 3, 4} and set(raw.inst_type[1:]) == set(range(1, 8))
    (tmp_path / "merge.json").write_text(json.dumps({str(k): 1 for k in range(8)} | {"0": 0}))
    assert set(
        read_consep_mat(tmp_path / "c.mat", merge=str(tmp_path / "merge.json")).inst_type[1:]
    ) == {1}
    scipy.io.savemat(tmp_path / "bad.mat", {"something": inst})
    with pytest.raises(HoverNetError, match=r"bad\.mat.*inst_map"):
        read_consep_mat(tmp_path / "bad.mat")


def test_original_patch_npy(tmp_path):
    name = "test_10_001"
    img = cv2.imread(str(DATA / "consep_patches/images" / f"{name}.png"))[:, :, ::-1]
    inst = tifffile.imread(DATA / "consep_patches/labels" / f"{name}_inst.tif").astype(np.int32)
    types = tifffile.imread(DATA / "consep_patches/labels" / f"{name}_type.tif")
    gappy = np.where(inst > 0, inst * 3 + 100, 0)
    arr = np.concatenate([img, gappy[..., None], types[..., None]], axis=-1).astype(np.int32)
    np.save(tmp_path / "p.npy", arr)
    image, labels = read_original_patch(tmp_path / "p.npy")
    out, out_types = labels_to_arrays(labels)
    assert (image == img).all() and (out == inst).all() and (out_types == types).all()
    np.save(tmp_path / "q.npy", arr[..., :2])
    with pytest.raises(HoverNetError, match=r"q\.npy.*H x W x 5"):
        read_original_patch(tmp_path / "q.npy")


def test_type_info_errors_name_the_file(tmp_path):
    (tmp_path / "t.json").write_text('{"1": ["a", [1, 2]]}')
    with pytest.raises(HoverNetError, match="t.json"):
        load_type_info(tmp_path / "t.json")
    (tmp_path / "u.json").write_text('{"0": ["bg", [0,0,0]], "1": ["a", [0,0,0]]}')
    with pytest.raises(HoverNetError, match="share a colour"):
        load_type_info(tmp_path / "u.json")
