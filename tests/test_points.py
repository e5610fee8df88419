"""Point annotations (a class at each nucleus centre, no outline): the reader, point patches
from extract-patches, their samples (type targets on disks only), losses that leave the NP and
HV branches alone, and a short extract + train run on CRCHisto images beside outlined patches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from PIL import Image
from support.patchdata import make_patch_folder
from support.trainhelpers import TinyNet, register_tiny

from hovernet.cli import main
from hovernet.config import geometry_for
from hovernet.data.dataset import POINT_IGNORE, PatchDataset
from hovernet.data.extraction import ExtractConfig, run_extraction
from hovernet.data.sources import find_sources
from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.io.annotations import MERGED_TYPE_INFO, detect_format
from hovernet.io.points import (
    PointLabels,
    PointTable,
    parse_point_classes,
    point_class_ids,
    read_points,
)
from hovernet.train.data import load_training_data
from hovernet.train.losses import IGNORE, hovernet_losses

CRCHISTO = DATA / "crchisto"
INFO = MERGED_TYPE_INFO["consep"]  # other, inflammatory, epithelial, spindle-shaped
CLASSES = "fibroblast=spindle-shaped,others=other"


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_reader_converts_1_based_coordinates_and_keeps_unlabelled(tmp_path):
    path = _csv(tmp_path / "a.csv", "x,y,class\n11.5,21,epithelial\n\n3,4,\n7,8,fibroblast\n")
    table = read_points(path, base=1)
    assert table.x.tolist() == [10.5, 2.0, 6.0] and table.y.tolist() == [20.0, 3.0, 7.0]
    assert table.names == ["epithelial", "", "fibroblast"] and table.lines == [2, 4, 5]
    ids = point_class_ids(table, INFO, parse_point_classes(CLASSES))
    assert ids.tolist() == [3, 0, 4]  # unlabelled: no type target
    assert read_points(path).x[0] == 11.5  # base 0 by default
    assert detect_format(path) == "points"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x,y,class\n1,2,epithelial\n3,oops,epithelial\n", r"a\.csv, line 3: expected numbers"),
        ("x,y,class\n1,2,epithelial\n4\n", r"a\.csv, line 3: expected numbers"),
        ("col,row,class\n1,2,epithelial\n", r"a\.csv, line 1: the header must name"),
        ("", r"a\.csv: empty points file"),
    ],
)
def test_bad_rows_give_one_error_naming_file_and_line(tmp_path, text, match):
    with pytest.raises(HoverNetError, match=match):
        read_points(_csv(tmp_path / "a.csv", text))


def test_unknown_classes_and_points_outside_are_refused(tmp_path):
    table = read_points(_csv(tmp_path / "a.csv", "x,y,class\n1,2,fibroblast\n3,4,goblet\n"))
    with pytest.raises(HoverNetError, match=r"'fibroblast' \(line 2\), 'goblet' \(line 3\).*"
                       r"--point-classes"):  # fmt: skip
        point_class_ids(table, INFO)
    ids = point_class_ids(table, INFO, parse_point_classes("fibroblast=spindle-shaped,goblet=-"))
    assert ids.tolist() == [4, 0]
    with pytest.raises(HoverNetError, match="need --type-info"):
        point_class_ids(table, None)
    with pytest.raises(HoverNetError, match="expected name=class pairs"):
        parse_point_classes("fibroblast")
    far = read_points(_csv(tmp_path / "b.csv", "x,y,class\n-3,2,other\n32.6,3,other\n"))
    with pytest.raises(HoverNetError, match=r"b\.csv, line 3: point \(32.6, 3\).*radius 3"):
        PointLabels(far, np.array([1, 1], np.uint8), (30, 30), radius=3)
    near = PointLabels(far, np.array([1, 1], np.uint8), (30, 30), radius=3.7)  # just off
    assert near.read_rows(0, 30)[2, :3].tolist() == [1, 0, 0] and near.read_rows(0, 30)[3, 29] == 2


def test_disks_lie_around_the_points():
    table = PointTable(
        Path("p.csv"), np.array([10.0, 0.0]), np.array([20.0, 1.0]), ["a", "b"], [2, 3]
    )
    labels = PointLabels(table, np.array([2, 3], np.uint8), (40, 30), radius=3)
    ids = labels.read_rows(0, 40)
    assert ids[20, 10] == 1 and ids[20, 13] == 1 and ids[20, 14] == 0 and ids[23, 10] == 1
    assert ids[24, 10] == 0 and ids[22, 12] == 1 and ids[23, 13] == 0  # a disk, not a square
    assert (ids == 1).sum() == 29  # lattice points within radius 3
    assert ids[1, 0] == 2 and ids[0, 0] == 2 and ids[4, 0] == 2  # clipped at the border
    assert labels.inst_type.tolist() == [0, 2, 3]
    assert np.array_equal(labels.read_rows(18, 25), ids[18:25])  # bands = the whole


def _point_source(root: Path) -> tuple[Path, Path, list[tuple[float, float, str]]]:
    """A 200 x 160 image and a 1-based points CSV with labelled and unlabelled points."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "pts").mkdir()
    image = rng.integers(60, 230, (160, 200, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "img" / "s1.png")
    points = [(31.0, 41.0, "epithelial"), (150.4, 100.6, "fibroblast"), (80, 120, "")]
    points += [(101.0, 21.0, "others")]
    lines = ["x,y,class"] + [f"{x},{y},{c}" for x, y, c in points]
    _csv(root / "pts" / "s1.csv", "\n".join(lines) + "\n")
    return root / "img", root / "pts", points


def test_point_patches_carry_type_disks_at_the_points(tmp_path):
    images, pts, points = _point_source(tmp_path)
    config = ExtractConfig(
        tmp_path / "ds", window=128, step=64, type_info=INFO, valid_fraction=0,
        point_classes=CLASSES, point_base=1, point_radius=3,
    )  # fmt: skip
    sources = find_sources(images, pts, "auto", typed=True)
    assert sources[0].fmt == "points"
    (result,) = run_extraction(config, sources)
    assert all(row.get("points") == 1 for row in result.rows)
    manifest = (tmp_path / "ds" / "manifest.csv").read_text().splitlines()
    assert manifest[0].endswith(",points") and manifest[1].endswith(",1")
    assert result.instances == {3: 1, 4: 1, 1: 1}  # the unlabelled point is no nucleus
    ids = {"epithelial": 3, "fibroblast": 4, "others": 1}
    seen = 0
    for row in result.rows:
        with np.load(tmp_path / "ds" / row["path"]) as data:
            assert "points" in data.files
            inst, typ = data["inst"], data["type"]
        assert set(np.unique(typ[inst == 0])) == {0}
        for x, y, name in points:
            r, c = round(y - 1 - row["y"]), round(x - 1 - row["x"])
            if 0 <= r < 128 and 0 <= c < 128:
                seen += 1
                assert typ[r, c] == ids.get(name, 0), (row, x, y)
                assert (inst[r, c] > 0) == bool(name)
        assert int((inst > 0).sum()) <= 32 * row["n_nuclei"]  # disks of radius 3 px
    assert seen >= 4
    # another radius in the same folder is refused, as any other setting
    other = ExtractConfig(**{**config.__dict__, "point_radius": 5.0})
    with pytest.raises(HoverNetError, match="point_radius"):
        run_extraction(other, sources)


def _patch(path: Path, *, points: bool, size: int = 300) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(60, 230, (size, size, 3), dtype=np.uint8)
    inst = np.zeros((size, size), np.uint16)
    typ = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i, (cy, cx, t) in enumerate([(150, 150, 2), (140, 170, 3), (170, 130, 4)], start=1):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= (3 if points else 9) ** 2
        inst[disk], typ[disk] = i, t
    arrays = {"img": img, "inst": inst, "type": typ}
    if points:
        arrays["points"] = np.ones((), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def test_point_samples_have_type_targets_on_disks_only(tmp_path):
    _patch(tmp_path / "p.npz", points=True)
    _patch(tmp_path / "o.npz", points=False)
    ds = PatchDataset([tmp_path / "p.npz", tmp_path / "o.npz"], "fast", augment=False)
    p, o = ds.sample_arrays(0), ds.sample_arrays(1)
    assert POINT_IGNORE == IGNORE
    assert int(p["inst_valid"]) == 0 and not p["np_map"].any() and not p["hv_map"].any()
    tp = p["tp_map"]  # 300 -> 256 input -> 164 output: offset (300 - 164) // 2 = 68
    assert tp[150 - 68, 150 - 68] == 2 and tp[140 - 68, 170 - 68] == 3
    assert tp[170 - 68, 130 - 68] == 4 and (tp >= 0).sum() == 3 * 29
    assert set(np.unique(tp[tp < 1])) == {POINT_IGNORE}  # never background
    assert "inst_valid" not in o and o["np_map"].sum() > 0 and o["tp_map"].min() == 0
    ds.inst_flag = True  # beside point patches every sample says so (batches collate)
    assert int(ds.sample_arrays(1)["inst_valid"]) == 1


def _batch(ds: PatchDataset, indices) -> dict[str, torch.Tensor]:
    items = [ds[i] for i in indices]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def test_point_patches_train_the_type_branch_only(tmp_path):
    _patch(tmp_path / "p.npz", points=True)
    _patch(tmp_path / "o.npz", points=False)
    ds = PatchDataset([tmp_path / "p.npz", tmp_path / "o.npz"], "fast", augment=False)
    ds.inst_flag = True
    torch.manual_seed(0)
    net = TinyNet(5)
    total, terms = hovernet_losses(net(_batch(ds, [0, 0])["img"].float()), _batch(ds, [0, 0]))
    total.backward()
    assert all(float(terms[k].detach()) == 0 for k in ("np_bce", "np_dice", "hv_mse", "hv_msge"))
    for head in ("np", "hv"):
        assert all(float(p.grad.abs().sum()) == 0 for p in net.heads[head].parameters())
    assert float(net.heads["tp"].weight.grad.abs().sum()) > 0
    # mixed batch: NP/HV terms are those of the outlined sample alone; TP uses both
    mixed, alone = _batch(ds, [0, 1]), _batch(ds, [1])
    out = net(mixed["img"].float())
    _, t_mixed = hovernet_losses(out, mixed)
    _, t_alone = hovernet_losses({k: v[1:] for k, v in out.items()}, alone)
    for k in ("np_bce", "np_dice", "hv_mse", "hv_msge"):
        assert torch.allclose(t_mixed[k], t_alone[k]), k
    assert not torch.allclose(t_mixed["tp_bce"], t_alone["tp_bce"])


@pytest.mark.filterwarnings("ignore:epoch 1:hovernet.errors.HoverNetWarning")
def test_cli_extracts_crchisto_points_and_trains_beside_outlines(tmp_path, monkeypatch):
    register_tiny(monkeypatch)
    outlines = make_patch_folder(tmp_path / "outlines", train=[0, 1], valid=[3], size=300)
    (tmp_path / "img").mkdir()
    (tmp_path / "pts").mkdir()
    for n in (1, 2, 3):
        shutil.copy(CRCHISTO / "images" / f"img{n}.png", tmp_path / "img")
        shutil.copy(CRCHISTO / "points" / f"img{n}.csv", tmp_path / "pts")
    points = tmp_path / "points"
    args = ["extract-patches", "--images", str(tmp_path / "img"), "--annotations"]
    args += [str(tmp_path / "pts"), "--type-info", str(outlines / "type_info.json")]
    args += ["--point-classes", CLASSES, "--point-base", "1", "--out", str(points), "--quiet"]
    args += ["--window", "300", "--step", "250", "--valid-fraction", "0.34"]
    _run(args)
    counts = json.loads((points / "class_counts.json").read_text())["splits"]
    names = [read_points(CRCHISTO / "points" / f"img{n}.csv").names for n in (1, 2, 3)]
    labelled = sum(name not in ("", "unlabelled") for table in names for name in table)
    assert sum(sum(counts[s]["instances"].values()) for s in counts) == labelled > 100
    data = load_training_data([outlines, points], geometry_for("fast"))
    assert all(ds.inst_flag for ds in data.train)
    run = tmp_path / "run"
    args = ["train", "--data", str(outlines), "--data", str(points), "--arch", "tiny"]
    args += ["--out", str(run), "--epochs", "1", "--steps-per-epoch", "3", "--batch", "4"]
    args += ["--workers", "0", "--valid-images", "2", "--mpp", "0.5", "--quiet"]
    _run(args)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["tp_bce"]) and np.isfinite(record["np_bce"])
    assert "valid_np_dice" in record and "valid_pq" in record


def _run(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, args


def test_validation_scores_nuclei_on_outlined_patches_only(tmp_path):
    from hovernet.train.validate import PatchOptions, patch_metrics

    _patch(tmp_path / "p.npz", points=True)
    _patch(tmp_path / "o.npz", points=False)
    outlined = PatchDataset([tmp_path / "o.npz"], "fast", augment=False)
    torch.manual_seed(0)
    net = TinyNet(5)
    alone = patch_metrics(net, [outlined], torch.device("cpu"), PatchOptions(batch=2))
    point = PatchDataset([tmp_path / "p.npz"], "fast", augment=False)
    outlined.inst_flag = point.inst_flag = True
    both = patch_metrics(net, [outlined, point], torch.device("cpu"), PatchOptions(batch=2))
    for key in ("valid_np_dice", "valid_np_acc", "valid_hv_mse", "valid_np_bce"):
        assert both[key] == pytest.approx(alone[key]), key
    apart = patch_metrics(net, [outlined, point], torch.device("cpu"), PatchOptions(batch=1))
    for key in ("valid_np_bce", "valid_np_dice", "valid_hv_mse", "valid_hv_msge"):
        assert apart[key] == pytest.approx(alone[key]), key  # the point-only batch: no term
    assert both["valid_tp_bce"] != pytest.approx(alone["valid_tp_bce"])  # the disks count


def test_point_folders_alone_warn_that_np_and_hv_do_not_train(tmp_path):
    images, pts, _ = _point_source(tmp_path)
    config = ExtractConfig(
        tmp_path / "ds", window=128, step=64, type_info=INFO, valid_fraction=0,
        point_classes=CLASSES, point_base=1,
    )  # fmt: skip
    run_extraction(config, find_sources(images, pts, "auto", typed=True))
    with pytest.warns(HoverNetWarning, match="nothing trains the NP and HV branches"):
        data = load_training_data([tmp_path / "ds"], geometry_for("fast"))
    assert data.nr_types == 5 and data.train[0].inst_flag


def test_load_annotated_reads_points_in_memory(tmp_path):
    from hovernet.data.annotated import load_annotated

    images, pts, _ = _point_source(tmp_path)
    options = {"classes": parse_point_classes(CLASSES), "base": 1, "radius": 2}
    ann = load_annotated(images / "s1.png", pts / "s1.csv", type_info=INFO, points=options)
    assert ann.inst.max() == 3 and ann.type[40, 30] == 3 and ann.type[99, 149] == 4
    assert ann.type[20, 100] == 1 and ann.type[119, 79] == 0  # unlabelled: nothing
