"""Slide mode's numbers are right or refused: the tissue mask decides which nuclei count and the
density is nuclei / tissue area; a finished or half-done slide counts only for the same model
and settings; the interrupt status counts stored regions; no lock file outlives a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.slide_helpers import ArraySlide, dark_tissue, disk_image

from hovernet.errors import HoverNetError
from hovernet.infer.slide import run_slide, run_slides
from hovernet.infer.slide_plan import SlideContext
from hovernet.infer.slide_setup import SlideConfig
from hovernet.io.slide_exports import output_paths
from hovernet.io.store import NucleusStore
from hovernet.model.standin import ANCHOR, BlobNet
from hovernet.progress import current_status, set_status

MPP = 0.25


def centres(width, height, step=41):
    clear = ANCHOR + 9  # BlobNet blinds the top-left ANCHOR px of every 164-px output square
    return [
        (x, y)
        for y in range(13, height - 8, step)
        for x in range(9, width - 8, step)
        if not (x % 164 < clear and y % 164 < clear)
    ]


IMAGE = disk_image((690, 700), centres(700, 690))


def half_mask(slide, name, config):
    """Tissue = the left half of the slide only (the disks cover all of it)."""
    thumb, thumb_mpp = slide.thumbnail(350)
    mask = np.zeros(thumb.shape[:2], bool)
    mask[:, : thumb.shape[1] // 2] = True
    return thumb, thumb_mpp, mask, thumb_mpp


def run(out, tissue_fn=dark_tissue, model=None, **kw):
    config = SlideConfig(out, proc_mpp=MPP, region_size=328, quiet=True, **kw)
    slide = ArraySlide(Path("s.svs"), IMAGE, MPP)
    lines: list[str] = []
    (result,) = run_slides(
        model or BlobNet(), [slide.path], config, lines.append, lambda p, c: slide, tissue_fn
    )
    return result, lines


def test_only_nuclei_inside_the_mask_count_and_density_is_their_ratio(tmp_path):
    result, _ = run(tmp_path, half_mask, post_proc_workers=0)
    assert result.status == "done", result.reason
    s = result.summary
    with NucleusStore(output_paths(tmp_path, "s")["store"], {}) as store:
        xs = np.array([r["xy"][0] for r in store.nuclei()])
    edge = IMAGE.shape[1] // 2  # the mask's half in level-0 pixels (thumbnail 2:1)
    assert len(xs) == s["nuclei"] > 20
    assert (xs < edge + 1).all()  # every centroid in the mask
    n_left = sum(x < edge - 2 for x, _ in centres(700, 690))
    assert abs(len(xs) - n_left) <= 2  # and the nuclei there are all kept
    # the area is the mask's: half the slide at 0.25 um/px
    half_mm2 = (IMAGE.shape[0] * (IMAGE.shape[1] // 2)) * (MPP * 1e-3) ** 2
    assert s["tissue_mm2"] == pytest.approx(half_mm2, rel=0.01)
    assert s["nuclei_per_mm2"] == pytest.approx(s["nuclei"] / s["tissue_mm2"], rel=1e-4)


def test_without_tissue_detection_the_whole_slide_is_tissue(tmp_path):
    result, _ = run(tmp_path, tissue_fn=None, detect_tissue=False, post_proc_workers=0)
    assert result.status == "done", result.reason
    whole_mm2 = IMAGE.shape[0] * IMAGE.shape[1] * (MPP * 1e-3) ** 2
    assert result.summary["tissue_mm2"] == pytest.approx(whole_mm2, rel=0.01)
    assert result.summary["tissue"] == "whole slide"
    assert result.summary["nuclei"] == len(centres(700, 690))


def test_no_tissue_message_names_the_mask_only_when_one_was_given(tmp_path):
    def empty(slide, name, config):
        thumb, mpp = slide.thumbnail(350)
        return thumb, mpp, np.zeros(thumb.shape[:2], bool), mpp

    _, lines = run(tmp_path / "a", empty)
    (line,) = [ln for ln in lines if "no tissue" in ln]
    assert "mask" not in line and "--no_tissue_detection" in line
    masks = tmp_path / "masks"
    masks.mkdir()
    result, lines = run(tmp_path / "b", empty, mask_dir=masks)
    (line,) = [ln for ln in lines if "marks no tissue" in ln]
    assert str(masks) in line
    assert result.summary["tissue"] == f"user masks in {masks}"  # was "mask masks"


def test_a_finished_slide_counts_only_for_the_same_model(tmp_path):
    first, _ = run(tmp_path, model_id="aaaa", post_proc_workers=0)
    assert first.status == "done"
    again, _ = run(tmp_path, model_id="aaaa", post_proc_workers=0)
    assert again.status == "skipped"
    other, _ = run(tmp_path, model_id="bbbb", post_proc_workers=0)
    assert other.status == "failed"
    assert "--overwrite" in other.reason and "model_id: 'aaaa' -> 'bbbb'" in other.reason
    phases, _ = run(tmp_path, model_id="aaaa", post_proc_workers=0, margin=60)
    assert phases.status == "failed" and "margin" in phases.reason
    redone, _ = run(tmp_path, model_id="bbbb", post_proc_workers=0, overwrite=True)
    assert redone.status == "done" and redone.summary["run"]["model_id"] == "bbbb"


def test_a_half_done_slide_resumes_only_for_the_same_model(tmp_path):
    class Stop(Exception):
        pass

    stored = []

    store_path = output_paths(tmp_path, "s")["store"]

    class OneRegionThenStop(BlobNet):
        def forward(self, x):
            if store_path.exists():  # killed once a region is stored
                with NucleusStore(store_path, {}) as store:
                    if store.done_regions():
                        raise Stop
            return super().forward(x)

    config = SlideConfig(
        tmp_path, proc_mpp=MPP, region_size=328, quiet=True, post_proc_workers=0,
        batch_size=1, model_id="aaaa",
    )  # fmt: skip
    slide = ArraySlide(Path("s.svs"), IMAGE, MPP)
    context = SlideContext(stored.append, lambda p, c: slide, dark_tissue)
    set_status(None)
    with pytest.raises(Stop):
        run_slide(OneRegionThenStop(), slide.path, config, context)
    with NucleusStore(output_paths(tmp_path, "s")["store"], {}) as store:
        n_done = len(store.done_regions())
    assert n_done >= 1
    assert f"{n_done} of " in current_status() and "tissue regions stored" in current_status()
    assert not (tmp_path / "s.lock").exists()
    with pytest.raises(HoverNetError, match="other settings.*model_id.*--overwrite"):
        run_slide(BlobNet(), slide.path, _replace(config, model_id="bbbb"), context)
    done = run_slide(BlobNet(), slide.path, config, context)
    assert (
        done.status == "done" and done.summary["regions_this_run"] < done.summary["regions_tissue"]
    )
    assert not (tmp_path / "s.lock").exists()
    summary = json.loads(output_paths(tmp_path, "s")["summary"].read_text())
    assert summary["run"]["model_id"] == "aaaa"


def _replace(config, **kw):
    from dataclasses import replace

    return replace(config, **kw)
