"""`hovernet stats --mode errors` end to end on real CoNSeP labels and degraded predictions."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import scipy.io as sio
import tifffile
from conftest import DATA
from test_metrics_errors import _degrade
from test_stats_cli import run_cli

from hovernet.metrics import instance_stats
from hovernet.metrics.errors import error_breakdown

NAMES = ["test_1_003", "test_4_010", "test_9_000"]
LABELS = DATA / "consep_patches/labels"


def _dirs(tmp_path):
    pred, true = tmp_path / "pred", tmp_path / "true"
    pred.mkdir(), true.mkdir()
    for i, name in enumerate(NAMES):
        for part in ("inst", "type"):
            shutil.copy(LABELS / f"{name}_{part}.tif", true / f"{name}_{part}.tif")
        inst = tifffile.imread(LABELS / f"{name}_inst.tif").astype(np.int32)
        sio.savemat(pred / f"{name}.mat", {"inst_map": _degrade(inst, np.random.default_rng(i))})
    return pred, true


def test_errors_mode_counts_causes_and_recall(tmp_path, capsys):
    pred, true = _dirs(tmp_path)
    out = tmp_path / "errors.json"
    args = ["--mode", "errors", "--pred_dir", pred, "--true_dir", true, "--mpp", "0.25"]
    code, stdout, _ = run_cli([*args, "--type-ids", "1,2,3,4", "--out", out], capsys)
    assert code == 0
    result = json.loads(out.read_text())
    tp = n_true = 0
    for name in NAMES:
        t = tifffile.imread(true / f"{name}_inst.tif")
        p = sio.loadmat(pred / f"{name}.mat")["inst_map"]
        s = instance_stats(t, p)
        got = result["per_image"][name]
        assert (got["tp"], got["n_true"], got["n_pred"]) == (s.tp, s.n_true, s.n_pred)
        assert got == error_breakdown(t, p).counts() | {k: got[k] for k in ("fn", "fp")}
        tp, n_true = tp + s.tp, n_true + s.n_true
    assert result["total"]["tp"] == tp and result["area_unit"] == "um2"
    by_area = result["recall_by_area"]
    assert [g["group"] for g in by_area] == ["0-5", "5-10", "10-20", "20-40", "40-inf"]
    for table in ("recall_by_area", "recall_by_border", "recall_by_type"):
        assert sum(g["n_true"] for g in result[table]) == n_true
        assert sum(g["tp"] for g in result[table]) == tp
    assert [g["group"] for g in result["recall_by_type"]] == ["1", "2", "3", "4"]
    assert "recall by area (um^2): 0-5: " in stdout and "recall by type: 1: " in stdout
    rows = list(csv.reader(out.with_suffix(".csv").open()))
    assert rows[0][:4] == ["image", "n_true", "n_pred", "tp"] and rows[-1][0] == "total"
    assert int(rows[-1][3]) == tp


def test_errors_mode_area_bins_in_pixels_and_bad_bins(tmp_path, capsys):
    pred, true = _dirs(tmp_path)
    args = ["--mode", "errors", "--pred_dir", pred, "--true_dir", true]
    out = tmp_path / "e.json"
    code, _, _ = run_cli([*args, "--area-bins", "100,400", "--out", out], capsys)
    result = json.loads(out.read_text())
    assert code == 0 and result["area_unit"] == "px" and "recall_by_type" not in result
    assert [g["group"] for g in result["recall_by_area"]] == ["0-100", "100-400", "400-inf"]
    code, _, err = run_cli([*args, "--area-bins", "40,20"], capsys)
    assert code == 2 and "--area-bins must be positive and increasing" in err
    code, _, err = run_cli([*args, "--area-bins", "a,b"], capsys)
    assert code == 2 and "--area-bins must be numbers" in err
