"""Slide mode with a slide that records no resolution: the error suggests --slide_mpp auto,
auto estimates it from the nuclei and records the estimate; an implausible result warns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import DATA, run_cli

from hovernet.demo import SAMPLE_SLIDE

TRUE_MPP = 0.499  # CMU-1-Small-Region.svs


@pytest.fixture(scope="module")
def no_mpp_slide(tmp_path_factory):
    """A 1024 px crop of the bundled 20x slide, saved without any resolution."""
    import openslide

    with openslide.OpenSlide(str(SAMPLE_SLIDE)) as slide:
        rgb = np.asarray(slide.read_region((600, 1100), 0, (1024, 1024)).convert("RGB"))
    path = tmp_path_factory.mktemp("nompp") / "crop.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", metadata=None)
    return path


def wsi(slide, out, *extra):
    """`hovernet infer wsi` on one slide: (exit status, stdout and stderr together)."""
    args = ["infer", "wsi", f"--input_dir={slide}", f"--output_dir={out}", "--quiet", "--phases=1"]
    code, out_text, err_text = run_cli([*args, *extra])
    return code, out_text + err_text


def test_no_resolution_is_an_error_that_suggests_auto(no_mpp_slide, tmp_path):
    code, text = wsi(no_mpp_slide, tmp_path)
    assert code == 2 and "records no resolution" in text and "--slide_mpp auto" in text
    assert not list(tmp_path.glob("*.summary.json"))


@pytest.mark.slow  # the estimate runs the network at 9 resolutions: ~1-4 min on 2 cores
def test_auto_estimates_the_resolution_and_records_it(no_mpp_slide, tmp_path):
    code, text = wsi(no_mpp_slide, tmp_path, "--slide_mpp=auto")
    assert code == 0, text
    assert "estimated" in text.lower()
    summary = json.loads((tmp_path / "crop.summary.json").read_text())
    assert abs(summary["slide_mpp"] - TRUE_MPP) <= 0.25 * TRUE_MPP
    assert summary["slide_mpp_estimate"] and summary["warnings"] == []
    assert summary["run"]["slide_mpp"] == round(summary["slide_mpp"], 6)
    # a file that records its resolution keeps it: auto estimates nothing
    code, text = wsi(SAMPLE_SLIDE, tmp_path / "recorded", "--slide_mpp=auto")
    assert code == 0 and "records 0.499 um/px" in text


def test_an_implausible_result_warns_and_is_recorded(tmp_path):
    # the TCGA slide records no resolution; taken as 0.25 um/px (its nuclei are a few pixels
    # wide) the bundled model finds no nuclei in its tissue: that must not pass in silence
    slide = DATA / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
    code, text = wsi(slide, tmp_path, "--slide_mpp=0.25")
    assert code == 0, text
    summary = json.loads((tmp_path / f"{slide.stem}.summary.json").read_text())
    assert summary["tissue_mm2"] > 0.1 and summary["nuclei_per_mm2"] < 100
    assert summary["warnings"], summary
    assert all(w in text for w in summary["warnings"])
    assert "--slide_mpp auto" in " ".join(summary["warnings"])


def test_bad_slide_mpp_values_are_refused(no_mpp_slide, tmp_path):
    for value in ("fast", "0", "-1"):
        code, text = wsi(no_mpp_slide, tmp_path, f"--slide_mpp={value}")
        assert code == 2 and "--slide_mpp" in text and "auto" in text
