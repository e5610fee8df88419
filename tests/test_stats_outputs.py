"""`hovernet stats` on the output folders of `hovernet infer`, without any extra flag.

Slide mode: a store made from a real typed CoNSeP label map, exported with the package's own
writers (`export_slide`, `write_summary`), at level-0 scales 1 and 2; its nuclei must come back
exactly (PQ 1, f1_d 1) against the map as truth in level-0 pixels, and the slide's other files
(overlay, summary, .json, thumbnail, mask) must not count as images. The slow test runs the real
commands on the bundled demo slide. Tile mode: its output folder is read through mat/.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io as sio
import tifffile
from conftest import DATA, run_cli

from hovernet.infer.measure import nucleus_measurements
from hovernet.infer.postprocess import instance_records
from hovernet.io.slide_exports import ExportSpec, export_slide, output_paths, write_summary
from hovernet.io.store import NucleusStore

TYPE_INFO = {
    0: ("background", (0, 0, 0)),
    1: ("other", (255, 165, 0)),
    2: ("inflammatory", (255, 0, 0)),
    3: ("epithelial", (0, 200, 0)),
    4: ("spindle-shaped", (0, 0, 255)),
}
PATCH = DATA / "consep_patches" / "labels" / "test_10_000"


def consep_map() -> tuple[np.ndarray, np.ndarray]:
    """A real typed label map, renumbered as post-processing numbers it."""
    inst = tifffile.imread(f"{PATCH}_inst.tif").astype(np.int32)
    types = tifffile.imread(f"{PATCH}_type.tif").astype(np.int32)
    return inst, types


def write_slide_output(out, inst, types, scale: float, name: str = "slide") -> np.ndarray:
    """Slide mode's files for a slide whose nuclei are `inst` in store pixels, `scale` level-0
    pixels per store pixel (as `region_nuclei` stores them); returns the records' map."""
    inst, nuclei = instance_records(inst, types)
    shapes = nucleus_measurements(inst, list(nuclei))
    recs = []
    for nid, rec in nuclei.items():
        cx, cy = rec["centroid"]
        rec = dict(rec, measurements=shapes[nid], contour=np.asarray(rec["contour"], np.int32))
        rec["xy"] = [(cx + 0.5) * scale - 0.5, (cy + 0.5) * scale - 0.5]
        recs.append(rec)
    h, w = inst.shape
    level0 = (round(w * scale), round(h * scale))
    paths = output_paths(out, name)
    meta = {"scale": scale, "nr_types": 5, "proc_mpp": 0.5}
    with NucleusStore(paths["store"], meta) as store:
        store.add_region(0, (0, 0, w, h), recs)
        thumb = np.full((h // 4, w // 4, 3), 230, np.uint8)
        spec = ExportSpec(
            f"{name}.svs", level0, 0.5 / scale, 0.5, (w, h), 20.0, thumb, 2.0,
            np.ones((h // 4, w // 4), bool), TYPE_INFO, save_mask=True, save_thumb=True,
        )  # fmt: skip
        summary = export_slide(store, paths, spec, log=lambda _: None)
    write_summary(paths["summary"], summary)
    return inst


def write_truth(folder, name: str, inst: np.ndarray, types: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / f"{name}_inst.tif", inst.astype(np.uint16))
    tifffile.imwrite(folder / f"{name}_type.tif", types.astype(np.uint8))


@pytest.mark.parametrize("scale", [1, 2])
def test_slide_output_folder_scores_without_flags(tmp_path, scale):
    inst, types = consep_map()
    pred = tmp_path / "wsi_out"
    stored = write_slide_output(pred, inst, types, float(scale))
    written = sorted(p.name for p in pred.iterdir())
    for side in ("slide.overlay.png", "slide.summary.json", "slide.json", "slide.thumb.png"):
        assert side in written  # files that used to count as images of their own
    # truth in level-0 pixels: each store pixel covers scale x scale level-0 pixels
    block = np.ones((scale, scale), np.int32)
    true_inst = np.kron(stored, block)
    true_type = np.kron(np.where(stored > 0, types, 0), block)
    write_truth(tmp_path / "truth", "slide", true_inst, true_type)
    n = len(np.unique(stored)) - 1
    out = tmp_path / "inst.json"
    code, _, err = run_cli(
        ["stats", "--pred_dir", pred, "--true_dir", tmp_path / "truth", "--out", out]
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["unmatched"] == {"pred_only": [], "true_only": []}
    image = res["per_image"]["slide"]
    assert (image["n_true"], image["n_pred"], image["tp"]) == (n, n, n)
    assert image["pq"] == pytest.approx(1.0) and image["aji"] == pytest.approx(1.0)
    out = tmp_path / "type.json"
    code, _, err = run_cli(
        ["stats", "--mode", "type", "--pred_dir", pred, "--true_dir", tmp_path / "truth",
         "--out", out]
    )  # fmt: skip
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["paired"] == n and res["unpaired_pred"] == 0 and res["unpaired_true"] == 0
    assert res["f1_d"] == 1.0 and res["acc"] == 1.0
    assert set(res["f1_type"]) == {str(t) for t in np.unique(true_type) if t}


def test_slide_output_scores_errors_against_truth(tmp_path):
    """Missing and extra nuclei are counted from the slide's own files, and a slide beside
    it with no truth is reported as before."""
    inst, types = consep_map()
    pred = tmp_path / "wsi_out"
    stored = write_slide_output(pred, inst, types, 1.0)
    dropped = np.unique(stored)[1:6]
    truth = np.where(np.isin(stored, dropped), 0, stored)
    write_truth(tmp_path / "truth", "slide", truth, np.where(truth > 0, types, 0))
    code, stdout, err = run_cli(["stats", "--pred_dir", pred, "--true_dir", tmp_path / "truth"])
    assert code == 0, err
    row = next(line for line in stdout.splitlines() if line.startswith("slide"))
    n = len(np.unique(stored)) - 1
    assert row.split()[-5:] == [str(n - 5), str(n), str(n - 5), "5", "0"]
    write_slide_output(pred, inst, types, 1.0, name="other_slide")
    code, _, err = run_cli(["stats", "--pred_dir", pred, "--true_dir", tmp_path / "truth"])
    assert code == 2 and "['other_slide']" in err and "--allow-unmatched" in err


def test_truth_not_at_level0_is_refused(tmp_path):
    inst, types = consep_map()
    pred = tmp_path / "wsi_out"
    stored = write_slide_output(pred, inst, types, 2.0)  # level 0 is twice the map's size
    write_truth(tmp_path / "truth", "slide", stored, np.where(stored > 0, types, 0))
    out = tmp_path / "r.json"
    code, _, err = run_cli(
        ["stats", "--pred_dir", pred, "--true_dir", tmp_path / "truth", "--out", out]
    )
    h, w = stored.shape
    assert code == 2
    assert f"{w} x {h} px" in err and f"{2 * w} x {2 * h}" in err and "level 0" in err
    assert not out.exists()


def test_slide_csv_missing_in_type_mode(tmp_path):
    inst, types = consep_map()
    pred = tmp_path / "wsi_out"
    stored = write_slide_output(pred, inst, types, 1.0)
    write_truth(tmp_path / "truth", "slide", stored, np.where(stored > 0, types, 0))
    (pred / "slide.csv").unlink()
    code, _, err = run_cli(
        ["stats", "--mode", "type", "--pred_dir", pred, "--true_dir", tmp_path / "truth"]
    )
    assert code == 2 and "slide.csv: no such file" in err


def test_tile_output_folder_is_read_through_mat(tmp_path):
    inst, types = consep_map()
    out = tmp_path / "tile_out"
    for sub in ("mat", "json", "overlay"):
        (out / sub).mkdir(parents=True)
    (out / "hovernet-run.json").write_text('{"model": "lite-v2"}')
    sio.savemat(out / "mat" / "a.mat", {"inst_map": inst})
    # a JSON without nuclei: read instead of the .mat, it would score 0
    (out / "json" / "a.json").write_text('{"mag": null, "nuc": {}}')
    write_truth(tmp_path / "truth", "a", inst, types)
    res_path = tmp_path / "r.json"
    code, _, err = run_cli(
        ["stats", "--pred_dir", out, "--true_dir", tmp_path / "truth", "--out", res_path]
    )
    assert code == 0, err
    assert f"predictions: {out / 'mat'}" in err
    res = json.loads(res_path.read_text())
    assert res["pred_dir"] == str(out / "mat")
    assert res["per_image"]["a"]["pq"] == pytest.approx(1.0)


@pytest.mark.slow
def test_demo_slide_in_slide_mode_against_tile_mode(tmp_path):
    """The real commands: the bundled slide in slide mode, scored against tile mode's nuclei
    on its level-0 pixels (written as <name>_inst.tif / _type.tif truth)."""
    from hovernet.io.slides import open_image

    slide = "hovernet/samples/CMU-1-Small-Region.svs"
    args = ["infer", "wsi", "--input_dir", slide, "--output_dir", tmp_path / "wsi", "--quiet"]
    code, _, err = run_cli(args)
    assert code == 0, err
    reader = open_image(slide)
    rgb = reader.read_region(0, 0, reader.width, reader.height)[..., :3]
    (tmp_path / "tiles").mkdir()
    tifffile.imwrite(tmp_path / "tiles" / "CMU-1-Small-Region.tif", rgb)
    args = ["infer", "tile", "--input_dir", tmp_path / "tiles", "--output_dir", tmp_path / "tile"]
    code, _, err = run_cli([*args, "--input_mpp", str(reader.mpp), "--quiet"])
    assert code == 0, err
    mat = sio.loadmat(tmp_path / "tile" / "mat" / "CMU-1-Small-Region.mat")
    lut = np.zeros(int(mat["inst_map"].max()) + 1, np.uint8)
    lut[mat["inst_uid"].ravel()] = mat["inst_type"].ravel()
    write_truth(tmp_path / "truth", "CMU-1-Small-Region", mat["inst_map"], lut[mat["inst_map"]])
    results = {}
    for mode in ("instance", "type"):
        out = tmp_path / f"{mode}.json"
        args = ["stats", "--mode", mode, "--pred_dir", tmp_path / "wsi"]
        code, _, err = run_cli([*args, "--true_dir", tmp_path / "truth", "--out", out])
        assert code == 0, err
        results[mode] = json.loads(out.read_text())
        assert results[mode]["unmatched"] == {"pred_only": [], "true_only": []}
    # same model, same pixels, resampled differently: most nuclei agree (scoring the slide's
    # .json, in 0.5 um/px pixels on the 0.499 um/px canvas, gave PQ 0.04)
    assert results["instance"]["pooled"]["pq"] > 0.7
    assert results["type"]["f1_d"] > 0.9 and results["type"]["acc"] > 0.85
