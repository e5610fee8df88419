"""The demo: the bundled model on the bundled CC0 slide, in slide mode."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from skimage.color import rgb2hed

from hovernet.demo import SAMPLE_SLIDE
from hovernet.model.bundled import BUNDLED_NAME

MPP = 0.499  # CMU-1-Small-Region.svs


def _crop_slide(path, x, y, size):
    """A crop of the bundled slide as a plain TIFF that records the slide's resolution."""
    import openslide

    with openslide.OpenSlide(str(SAMPLE_SLIDE)) as slide:
        rgb = np.asarray(slide.read_region((x, y), 0, (size, size)).convert("RGB"))
    res = 1e4 / MPP  # pixels per centimetre
    tifffile.imwrite(path, rgb, resolution=(res, res), resolutionunit="CENTIMETER")
    return rgb


def test_bundled_model_on_a_crop_of_the_demo_slide_finds_plausible_nuclei(tmp_path):
    from hovernet.infer.loading import LoadOptions, load_for_inference
    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig
    from hovernet.io.slide_exports import output_paths
    from hovernet.resources import spare_cpus

    crop = tmp_path / "cmu_crop.tif"
    rgb = _crop_slide(crop, 700, 1200, 768)  # stroma and epithelium in the slide's middle
    model, type_info = load_for_inference(LoadOptions(model_path=None, device="cpu"))
    assert model.mode == "lite" and model.meta.mpp == 0.5
    # the default path of `hovernet infer wsi`: post-processing in worker processes
    workers = spare_cpus(8)
    assert workers >= 1
    config = SlideConfig(
        output_dir=tmp_path / "out", type_info=type_info, post_proc_workers=workers
    )
    (result,) = run_slides(model, [crop], config, log=lambda line: None)
    assert result.status == "done", result.reason
    paths = output_paths(tmp_path / "out", "cmu_crop")
    summary = json.loads(paths["summary"].read_text())
    assert summary["tissue_mm2"] > 0.05
    assert 500 <= summary["nuclei_per_mm2"] <= 20000, summary
    n, area = summary["nuclei"], summary["tissue_mm2"]
    assert summary["nuclei_per_mm2"] == pytest.approx(n / area, rel=1e-4)
    # most outlines enclose haematoxylin-dark pixels: each nucleus's mean haematoxylin optical
    # density against the median over the crop's tissue
    features = json.loads(gzip.decompress(paths["geojson"].read_bytes()))["features"]
    assert len(features) == summary["nuclei"] > 20
    haem = rgb2hed(rgb)[..., 0]
    tissue = rgb.mean(axis=2) < 215
    reference = np.median(haem[tissue])
    dark = 0
    for feature in features:
        geometry = feature["geometry"]
        polygons = geometry["coordinates"]
        if geometry["type"] == "Polygon":
            polygons = [polygons]
        mask = np.zeros(rgb.shape[:2], np.uint8)
        for polygon in polygons:
            cv2.fillPoly(mask, [np.round(np.asarray(polygon[0])).astype(np.int32)], 1)
        if mask.any() and haem[mask > 0].mean() > reference:
            dark += 1
    assert dark / len(features) >= 0.8, (dark, len(features))


@pytest.mark.slow
def test_demo_segments_the_bundled_slide_with_the_bundled_model(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "hovernet.demo", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"using the bundled CPU model {BUNDLED_NAME}" in result.stderr
    summary = json.loads((out / "CMU-1-Small-Region.summary.json").read_text())
    assert 500 <= summary["nuclei_per_mm2"] <= 20000
    assert f"{summary['nuclei']} nuclei" in result.stdout
    for name, count in summary["nuclei_per_class"].items():
        assert f"{name}" in result.stdout and str(count) in result.stdout
    exports = (".overlay.png", ".geojson.gz", ".csv", ".json", ".summary.json", ".density.tif")
    for suffix in (*exports, ".density.png"):
        assert str(out / f"CMU-1-Small-Region{suffix}") in result.stdout
    assert str(out / "cohort.csv") in result.stdout


def test_demo_refuses_a_missing_checkpoint(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hovernet.demo",
            "--output-dir",
            str(tmp_path / "o"),
            "--model-path",
            str(tmp_path / "none.tar"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "none.tar does not exist" in result.stderr
    assert not (tmp_path / "o").exists()
