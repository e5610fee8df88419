"""`hovernet stats` end to end on the reference cases written in the supported file formats."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.io as sio
import tifffile
from conftest import REFERENCE

from hovernet.cli import main

GOLDEN = json.loads((REFERENCE / "golden.json").read_text())["metrics"]
INSTANCE_KEYS = ("dice", "aji", "aji_plus", "dq", "sq", "pq")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(["stats", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def instance_dirs(tmp_path):
    """Truth as <name>_inst.tif (as ../shared/data), predictions as the original's .mat."""
    pred, true = tmp_path / "pred", tmp_path / "true"
    pred.mkdir()
    true.mkdir()
    for i in range(3):
        z = np.load(REFERENCE / f"postproc_untyped_{i}.npz")
        tifffile.imwrite(true / f"case{i}_inst.tif", z["true_inst"].astype(np.uint16))
        sio.savemat(pred / f"case{i}.mat", {"inst_map": z["pred_inst"].astype(np.int32)})
    return pred, true


def test_instance_mode_reproduces_golden(instance_dirs, tmp_path, capsys):
    pred, true = instance_dirs
    out = tmp_path / "res" / "result.json"
    code, stdout, _ = run_cli(
        ["--mode", "instance", "--pred_dir", pred, "--true_dir", true, "--out", out], capsys
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert sorted(result["per_image"]) == ["case0", "case1", "case2"]
    for i in range(3):
        for key in INSTANCE_KEYS:
            got = result["per_image"][f"case{i}"][key]
            assert got == pytest.approx(GOLDEN[f"untyped_{i}"][key], abs=1e-6)
    for key in INSTANCE_KEYS:
        expected = np.mean([GOLDEN[f"untyped_{i}"][key] for i in range(3)])
        assert result["mean"][key] == pytest.approx(expected, abs=1e-6)
        assert 0.85 < result["pooled"][key] <= 1.0
    # pooled DQ from the summed counts
    n = {k: sum(v[k] for v in result["per_image"].values()) for k in ("tp", "fp", "fn")}
    dq = n["tp"] / (n["tp"] + 0.5 * n["fp"] + 0.5 * n["fn"])
    assert result["pooled"]["dq"] == pytest.approx(dq)
    assert result["unmatched"] == {"pred_only": [], "true_only": []}
    # printed table and CSV beside the JSON
    assert "case1" in stdout and "mean" in stdout and "pooled" in stdout
    rows = list(csv.DictReader((out.parent / "result.csv").open()))
    assert [r["image"] for r in rows] == ["case0", "case1", "case2", "mean", "pooled"]
    assert float(rows[3]["pq"]) == pytest.approx(result["mean"]["pq"], abs=1e-9)
    assert (
        int(rows[0]["n_true"])
        == len(np.unique(np.load(REFERENCE / "postproc_untyped_0.npz")["true_inst"])) - 1
    )


def test_instance_mode_reads_npy_and_json_predictions(tmp_path, capsys):
    pred, true = tmp_path / "pred", tmp_path / "true"
    pred.mkdir()
    true.mkdir()
    z = np.load(REFERENCE / "postproc_untyped_0.npz")
    np.save(true / "a.npy", z["true_inst"])
    sio.savemat(true / "b.mat", {"inst_map": z["true_inst"].astype(float)})  # MATLAB doubles
    np.save(pred / "a.npy", z["pred_inst"])
    # the original's JSON output: contours are filled on a canvas the size of the truth
    (pred / "b.json").write_text((REFERENCE / "postproc_untyped_0.json").read_text())
    out = tmp_path / "r.json"
    code, _, _ = run_cli(["--pred-dir", pred, "--true-dir", true, "--out", out], capsys)
    assert code == 0
    res = json.loads(out.read_text())["per_image"]
    for key in INSTANCE_KEYS:
        assert res["a"][key] == pytest.approx(GOLDEN["untyped_0"][key], abs=1e-6)
        # a filled contour differs from the map by a few boundary pixels only
        assert res["b"][key] == pytest.approx(GOLDEN["untyped_0"][key], abs=1e-3)
    assert res["b"]["n_pred"] == res["a"]["n_pred"]


def _type_inputs():
    z = np.load(REFERENCE / "type_stats_inputs.npz")
    return [
        (z[f"true_centroid_{i}"], z[f"true_type_{i}"], z[f"pred_centroid_{i}"], z[f"pred_type_{i}"])
        for i in range(16)
    ]


def test_type_mode_reproduces_golden_from_mat_and_json(tmp_path, capsys):
    pred, true = tmp_path / "pred", tmp_path / "true"
    pred.mkdir()
    true.mkdir()
    for i, (txy, tt, pxy, pt) in enumerate(_type_inputs()):
        sio.savemat(true / f"img_{i:02d}.mat", {"inst_centroid": txy, "inst_type": tt[:, None]})
        if i % 2:  # half as the original's .mat, half as the JSON output
            sio.savemat(pred / f"img_{i:02d}.mat", {"inst_centroid": pxy, "inst_type": pt[:, None]})
        else:
            nuc = {
                str(k + 1): {
                    "bbox": [[0, 0], [1, 1]],
                    "centroid": xy.tolist(),
                    "contour": [],
                    "type": int(t),
                    "type_prob": 1.0,
                }
                for k, (xy, t) in enumerate(zip(pxy, pt, strict=True))
            }
            (pred / f"img_{i:02d}.json").write_text(json.dumps({"mag": 40, "nuc": nuc}))
    out = tmp_path / "type.json"
    code, stdout, _ = run_cli(
        ["--mode", "type", "--pred_dir", pred, "--true_dir", true, "--out", out], capsys
    )
    assert code == 0
    res = json.loads(out.read_text())
    expected = GOLDEN["type_stats"]
    assert res["f1_d"] == pytest.approx(expected["f1_d"], abs=1e-5)
    assert res["acc"] == pytest.approx(expected["acc"], abs=1e-5)
    assert res["f1_type"].keys() == expected["f1_type"].keys()
    for t, v in expected["f1_type"].items():
        assert res["f1_type"][t] == pytest.approx(v, abs=1e-5)
    assert res["radius_px"] == 12.0
    assert len(res["per_image"]) == 16
    assert res["per_image"]["img_00"]["paired"] == GOLDEN["pair_coordinates_case0"]["paired"]
    assert sum(v["paired"] for v in res["per_image"].values()) == res["paired"]
    assert "f1_d=0.87240" in stdout
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert rows[-1]["image"] == "pooled" and float(rows[-1]["f1_type_2"]) == pytest.approx(
        expected["f1_type"]["2"], abs=1e-5
    )


def test_type_mode_from_inst_and_type_tifs_with_radius_in_microns(tmp_path, capsys):
    pred, true = tmp_path / "pred", tmp_path / "true"
    pred.mkdir()
    true.mkdir()
    for i in range(16):
        z = np.load(REFERENCE / f"postproc_typed_{i}.npz")
        tifffile.imwrite(true / f"c{i}_inst.tif", z["true_inst"].astype(np.uint16))
        tifffile.imwrite(true / f"c{i}_type.tif", z["true_type"])
        pred_type = np.where(z["pred_inst"] > 0, z["pred_map"][..., 0], 0).astype(np.int32)
        np.save(pred / f"c{i}.npy", np.stack([z["pred_inst"], pred_type], axis=-1))
    out = tmp_path / "t.json"
    args = ["--mode", "type", "--pred_dir", pred, "--true_dir", true, "--out", out]
    code, _, _ = run_cli([*args, "--radius", "3", "--mpp", "0.25"], capsys)  # 3 um = 12 px
    assert code == 0
    res = json.loads(out.read_text())
    assert res["radius_px"] == pytest.approx(12.0)
    assert res["f1_d"] == pytest.approx(GOLDEN["type_stats"]["f1_d"], abs=1e-5)
    assert res["acc"] == pytest.approx(GOLDEN["type_stats"]["acc"], abs=1e-5)


# ---------------------------------------------------------------- bad input
def test_missing_folder(instance_dirs, tmp_path, capsys):
    pred, _ = instance_dirs
    code, _, err = run_cli(["--pred_dir", pred, "--true_dir", tmp_path / "nope"], capsys)
    assert code == 2 and "--true_dir" in err and "nope" in err and "does not exist" in err


def test_unmatched_names(instance_dirs, tmp_path, capsys):
    pred, true = instance_dirs
    (true / "case1_inst.tif").rename(true / "other_inst.tif")
    out = tmp_path / "r.json"
    code, _, err = run_cli(["--pred_dir", pred, "--true_dir", true, "--out", out], capsys)
    assert code == 2 and "case1" in err and "--allow-unmatched" in err
    assert not out.exists()
    code, _, err = run_cli(
        ["--pred_dir", pred, "--true_dir", true, "--out", out, "--allow-unmatched"], capsys
    )
    assert code == 0 and "case1" in err and "other" in err
    res = json.loads(out.read_text())
    assert res["unmatched"] == {"pred_only": ["case1"], "true_only": ["other"]}
    assert sorted(res["per_image"]) == ["case0", "case2"]
    # nothing in common at all
    for f in true.iterdir():
        f.rename(true / f"x_{f.name}")
    code, _, err = run_cli(["--pred_dir", pred, "--true_dir", true], capsys)
    assert code == 2 and "no image name is in both" in err


def test_shape_mismatch_writes_nothing(instance_dirs, tmp_path, capsys):
    pred, true = instance_dirs
    sio.savemat(pred / "case1.mat", {"inst_map": np.zeros((100, 90), np.int32)})
    out = tmp_path / "r.json"
    code, _, err = run_cli(["--pred_dir", pred, "--true_dir", true, "--out", out], capsys)
    assert code == 2 and "case1.mat" in err and "100 x 90" in err and "512 x 512" in err
    assert not out.exists() and not out.with_suffix(".csv").exists()
    assert list(tmp_path.glob("*.tmp*")) == []


def test_non_integer_labels(instance_dirs, capsys):
    pred, true = instance_dirs
    sio.savemat(pred / "case2.mat", {"inst_map": np.full((512, 512), 0.5)})
    code, _, err = run_cli(["--pred_dir", pred, "--true_dir", true], capsys)
    assert code == 2 and "case2.mat" in err and "whole numbers" in err


def test_missing_mat_key_and_bad_out(instance_dirs, tmp_path, capsys):
    pred, true = instance_dirs
    code, _, err = run_cli(["--mode", "type", "--pred_dir", pred, "--true_dir", true], capsys)
    assert code == 2 and "inst_centroid" in err
    code, _, err = run_cli(
        ["--pred_dir", pred, "--true_dir", true, "--out", tmp_path / "r.csv"], capsys
    )
    assert code == 2 and ".json" in err
    code, _, err = run_cli(["--mode", "typo", "--pred_dir", pred, "--true_dir", true], capsys)
    assert code == 2 and "--mode" in err
