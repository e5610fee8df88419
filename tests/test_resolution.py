"""Resolution from the nuclei (hovernet.infer.resolution) on real images, plausibility warnings,
and the training warnings that keep a run from silently lacking its resolution or classes.

Estimates measured with the bundled model (8 windows; see the module docstring): CMU-1 0.501
(true 0.499), slide_a 0.283 (0.25), MoNuSeg test tiles 0.156-0.269 (0.25; 13 of 14 within 25 %).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DATA, REPO
from support.patchdata import make_patch_folder
from support.trainhelpers import register_tiny

from hovernet.errors import HoverNetError
from hovernet.infer import resolution as res
from hovernet.io.wsi import open_slide

CMU = REPO / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
MONUSEG = DATA / "monuseg"


@pytest.fixture(scope="module")
def model():
    import hovernet
    from hovernet.infer.backends import use_backend

    net = hovernet.load_model()
    use_backend(net, "auto", "auto")  # as `hovernet infer` does
    return net


def _estimate(path: Path, model) -> res.MppEstimate:
    # the file's own resolution is overridden: the estimator sees pixels only
    with open_slide(path, mpp=1.0) as slide:
        assert slide.mpp == 1.0
        return res.estimate_slide_mpp(slide, model)


def _check(estimate: res.MppEstimate, truth: float) -> None:
    assert abs(estimate.mpp / truth - 1) <= 0.25, estimate.describe()
    assert estimate.nuclei >= 50 and estimate.windows >= 4
    assert len(estimate.candidates) == len(res.CANDIDATES)
    line = estimate.describe()
    assert "\n" not in line and f"{estimate.mpp:.3g} um/px" in line


# -- estimates on real images ---------------------------------------------------------------


def test_estimate_cmu_20x(model):
    """The bundled 20x Aperio slide (file: 0.499 um/px)."""
    estimate = _estimate(CMU, model)
    _check(estimate, 0.499)
    # the candidate chosen is the truth's, not 2.0 um/px where cut-up nuclei have the size too
    assert estimate.best.mpp == 0.5


def test_estimate_monuseg_first_test_tile(model):
    """A 40x MoNuSeg tile (0.25 um/px), a PNG without resolution."""
    name = json.loads((MONUSEG / "split.json").read_text())["test"][0]
    _check(_estimate(MONUSEG / "images" / f"{name}.png", model), 0.25)


@pytest.mark.slow
def test_estimate_seed_slide_40x(model):
    """slide_a: CoNSeP test images in a pyramidal TIFF tagged 0.25 um/px (tags ignored)."""
    _check(_estimate(DATA / "seed_format" / "slide_a.tif", model), 0.25)


@pytest.mark.slow
def test_estimate_monuseg_test_tiles(model):
    """The next 4 MoNuSeg test tiles each within 25 %; over all 14, the median within 15 %."""
    names = json.loads((MONUSEG / "split.json").read_text())["test"]
    estimates = {n: _estimate(MONUSEG / "images" / f"{n}.png", model).mpp for n in names}
    for name in names[1:5]:
        assert abs(estimates[name] / 0.25 - 1) <= 0.25, (name, estimates[name])
    assert abs(np.median(list(estimates.values())) / 0.25 - 1) <= 0.15, estimates
    assert sum(abs(e / 0.25 - 1) <= 0.25 for e in estimates.values()) >= 12, estimates


def test_estimate_refuses_what_it_cannot_do(model, tmp_path):
    white = np.full((600, 800, 3), 255, np.uint8)

    def read(x, y, w, h, mpp):
        return np.full((h, w, 3), 255, np.uint8)

    with pytest.raises(HoverNetError, match=r"blank\.png: no tissue.*--slide_mpp"):
        options = res.EstimateOptions(name="blank.png")
        res.estimate_mpp(read, (800, 600), model, thumbnail=(white, 1.0), options=options)
    with pytest.raises(HoverNetError, match="no tissue"):  # thumbnail read through `read`
        res.estimate_mpp(read, (8000, 6000), model)
    no_mpp = type("M", (), {"meta": None})()
    with pytest.raises(HoverNetError, match="does not record the resolution.*--slide_mpp"):
        res.estimate_mpp(read, (800, 600), no_mpp)


# -- the choice, on measured figures (pure) --------------------------------------------------


def _measured(mpp: float, median: float, n: int = 50, prob: float = 0.85, hv: float = 0.07):
    areas = list(np.full(n, median))
    return res.Measured(mpp, areas, [prob] * n, hv_sq_err=hv * 100, hv_pixels=100)


def test_score_interpolates_across_the_reference():
    ref = res.REFERENCE_AREA_UM2
    # area grows as mpp^2 around the truth (0.3 um/px): the crossing is found between 0.25 and
    # 0.354, where the log-log line through them meets the reference
    measured = [_measured(c, ref * (c / 0.3) ** 2) for c in res.CANDIDATES]
    mpp, scores = res.score_candidates(measured)
    assert math.isclose(mpp, 0.3, rel_tol=1e-6)
    assert min(scores, key=lambda s: s.score).mpp in (0.25, 0.3536)


def test_score_prefers_the_model_at_ease_over_cut_up_nuclei():
    ref = res.REFERENCE_AREA_UM2
    measured = [_measured(c, ref * (c / 0.5) ** 2) for c in res.CANDIDATES]
    # at 2.0 um/px nuclei far too large are cut into reference-sized fragments: same median
    # area, but a lower probability and HV maps that do not fit the fragments
    measured[-1] = _measured(2.0, ref, prob=0.79, hv=0.14)
    measured[-2] = _measured(1.4142, ref * 0.7, prob=0.78, hv=0.15)
    mpp, _ = res.score_candidates(measured)
    assert math.isclose(mpp, 0.5, rel_tol=1e-6)


def test_score_errors_and_edges():
    ref = res.REFERENCE_AREA_UM2
    few = [_measured(c, ref, n=res.MIN_NUCLEI - 1) for c in res.CANDIDATES]
    with pytest.raises(HoverNetError, match="fewer than 10 nuclei at every candidate"):
        res.score_candidates(few)
    # still far too small at 2 um/px: coarser than every candidate
    small = [_measured(c, ref * (c / 8.0) ** 2) for c in res.CANDIDATES]
    with pytest.raises(HoverNetError, match="smaller.*coarser than every candidate"):
        res.score_candidates(small)
    # just beyond the end (within half a step): extrapolated with area ~ mpp^2
    near = [_measured(c, ref * (c / 2.2) ** 2) for c in res.CANDIDATES]
    mpp, _ = res.score_candidates(near)
    assert math.isclose(mpp, 2.2, rel_tol=1e-6)


def test_tissue_windows_pick_nuclei_not_glass():
    with open_slide(CMU) as slide:
        thumb, thumb_mpp = slide.thumbnail(512)
    down = thumb_mpp / 0.499
    centres = res.tissue_windows(thumb, 8, 224 / down, 112 / down)
    assert len(centres) == 8
    for x, y in centres:  # each on tissue: saturated, not white
        patch = thumb[int(y) - 2 : int(y) + 3, int(x) - 2 : int(x) + 3].reshape(-1, 3)
        assert patch.min(axis=1).mean() < 200
    xy = np.array(centres)
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    assert gaps.min() >= 224 / down - 1
    assert res.tissue_windows(np.full((64, 64, 3), 250, np.uint8), 4, 10) == []


# -- plausibility ----------------------------------------------------------------------------


def test_plausibility_warnings():
    # slide mode on CMU-1 at its true 0.499 um/px: 2,455 nuclei in 0.706 mm^2 (3,478 per mm^2)
    assert res.plausibility_warnings(2455, 0.705828, median_area_um2=22.5, mpp=0.499) == []
    # no nuclei in tissue (the TCGA slide run at --slide_mpp 0.25 found none)
    (line,) = res.plausibility_warnings(0, 0.7, mpp=0.25, name="tcga.svs")
    assert line.startswith("tcga.svs: no nuclei in 0.70 mm^2 of tissue at 0.25 um/px")
    assert "--slide_mpp auto" in line and "H&E" in line and "focus" in line
    assert res.plausibility_warnings(0, 0.05) == []  # too little tissue to say
    (high,) = res.plausibility_warnings(200_000, 1.0)
    assert "200,000 nuclei per mm^2" in high and "far above" in high and "--slide_mpp" in high
    (low,) = res.plausibility_warnings(20, 1.0)
    assert "far below" in low
    (small,) = res.plausibility_warnings(2455, 0.705828, median_area_um2=2.0)
    assert "median nucleus is 2.0 um^2" in small and "too small" in small


# -- training: warnings and config.yaml --------------------------------------------------------


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("resolution_data")
    # patch 3 (validation) holds CoNSeP classes 1 and 3 only; patch 2 holds all four
    lacking = make_patch_folder(root / "lacking", train=[0, 1], valid=[3], size=300)
    complete = make_patch_folder(root / "complete", train=[0, 1], valid=[2], size=300)
    return lacking, complete


def _train_cli(args: list[str], capsys, epochs: int = 1) -> tuple[int, list[str]]:
    from hovernet.cli import run

    quick = ["--arch", "tiny", "--epochs", str(epochs), "--steps-per-epoch", "1", "--batch", "2"]
    quick += ["--workers", "0", "--valid-images", "0", "--quiet"]
    capsys.readouterr()
    code = run(["train", *args, *quick])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("warning:")]


def test_train_warns_about_mpp_and_absent_classes(folders, tmp_path, monkeypatch, capsys):
    register_tiny(monkeypatch)
    lacking, complete = folders
    code, warnings = _train_cli(["--data", str(lacking), "--out", str(tmp_path / "a")], capsys)
    assert code == 0
    assert len(warnings) == 2, warnings
    mpp_line, class_line = warnings
    assert "no --mpp" in mpp_line and "slide mode" in mpp_line and "--input_mpp" in mpp_line
    assert "pass --mpp" in mpp_line
    assert "classes 2 (inflammatory), 4 (spindle-shaped) have no nucleus" in class_line
    assert str(lacking) in class_line and "valid split" in class_line
    args = ["--data", str(complete), "--out", str(tmp_path / "b"), "--mpp", "0.25"]
    code, warnings = _train_cli(args, capsys)
    assert code == 0 and warnings == []


def test_validation_class_warning_counts_the_patches_validation_uses(folders, tmp_path):
    from hovernet.train.data import validation_class_warning

    lacking, complete = folders
    assert validation_class_warning([complete]) is None
    line = validation_class_warning([lacking, complete])
    assert line is None  # complete's validation patch holds the classes lacking's lacks
    # --valid-patches 1 scores only lacking's patch: its classes 2 and 4 are then missing
    line = validation_class_warning([lacking, complete], limit=1)
    assert "1 validation patch(es)" in line and "2 (inflammatory)" in line
    untyped = make_patch_folder(tmp_path / "untyped", train=[4], valid=[5], typed=False)
    assert validation_class_warning([untyped]) is None


def test_config_yaml_has_absolute_paths_and_resume_works_elsewhere(
    folders, tmp_path, monkeypatch, capsys
):
    register_tiny(monkeypatch)
    _, complete = folders
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    os.symlink(complete, work / "data" / "patches")
    monkeypatch.chdir(work)
    here = os.getcwd()
    args = ["--data", "data/patches", "--out", "run", "--mpp", "0.25"]
    code, _ = _train_cli(args, capsys)
    assert code == 0
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert saved["data"] == [os.path.join(here, "data", "patches")]  # the link, not its target
    assert saved["out"] == os.path.join(here, "run")
    # resume from another folder: the relative paths given at the start no longer resolve
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _ = _train_cli(["--out", str(work / "run"), "--resume"], capsys, epochs=2)
    assert code == 0
    import torch

    state = torch.load(work / "run" / "last.pth", weights_only=True)["train_state"]
    assert state["epoch"] == 2


def test_config_to_dict_keeps_bundled_init(tmp_path, monkeypatch):
    from hovernet.train.config import TrainConfig, config_to_dict

    monkeypatch.chdir(tmp_path)
    here = os.getcwd()
    out = config_to_dict(TrainConfig(data=[Path("d")], out=Path("r"), init=Path("bundled")))
    assert out["init"] == "bundled" and out["data"] == [os.path.join(here, "d")]
    out = config_to_dict(TrainConfig(init=Path("ck.pth"), pretrained=Path("~/w.tar")))
    assert out["init"] == os.path.join(here, "ck.pth")
    assert out["pretrained"] == str(Path.home() / "w.tar")
