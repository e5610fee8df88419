"""Slide mode's three steps, each on its own (`hovernet.infer.slide`): `prepare_slide` ->
`SlidePlan` (everything decided before the network runs), `segment` (regions into the store),
`finish` (exports and summary from a store); and the run record they carry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import DATA
from support.slide_helpers import ArraySlide, dark_tissue, disk_image

from hovernet.demo import SAMPLE_SLIDE
from hovernet.infer.loading import LoadOptions, load_for_inference
from hovernet.infer.run_record import RunRecord
from hovernet.infer.slide import Segmented, finish, segment
from hovernet.infer.slide_plan import SlideContext, prepare_slide
from hovernet.infer.slide_setup import SlideConfig
from hovernet.infer.tissue import tissue_area_mm2
from hovernet.io.slide_exports import output_paths
from hovernet.io.store import NucleusStore
from hovernet.io.wsi import open_slide
from hovernet.model.standin import BlobNet

MPP = 0.25
SLIDE_A = DATA / "seed_format" / "slide_a.tif"


@pytest.fixture(scope="module")
def bundled():
    model, type_info = load_for_inference(LoadOptions(device="cpu"))
    return model, type_info


def _plan(model, path: Path, config: SlideConfig, lines: list[str]):
    with open_slide(path) as slide:
        return prepare_slide(model, slide, config, SlideContext(lines.append), path.stem)


def test_the_plan_of_the_demo_slide(bundled, tmp_path):
    model, type_info = bundled
    config = SlideConfig(tmp_path, region_size=800, type_info=type_info, model_id="abcd")
    lines: list[str] = []
    plan = _plan(model, SAMPLE_SLIDE, config, lines)
    assert lines == []  # one phase at the model's resolution: nothing to say
    frame = plan.frame
    assert (frame.proc_mpp, frame.n_phases, frame.k, frame.phases.n) == (0.5, 1, 1, 1)
    # the slide (2220 x 2967 at 0.499 um/px) at the model's 0.5 um/px
    assert (frame.width, frame.height) == (2216, 2961)
    assert frame.scale == pytest.approx(2220 / 2216)
    # every region the tissue touches is planned: the area is the whole mask's
    assert 0 < len(plan.tissue_indices) < len(plan.regions) == 12
    assert plan.tissue_mm2 == pytest.approx(tissue_area_mm2(plan.mask, plan.mask_mpp))
    assert 0.5 < plan.tissue_mm2 < 2220 * 2967 * 0.499**2 / 1e6
    assert [r.index for r in plan.todo(set())] == list(plan.tissue_indices)
    assert [r.index for r in plan.todo({plan.tissue_indices[0]})] == list(plan.tissue_indices[1:])
    # the run's identity: the checkpoint hash and the settings, never a display name
    record = plan.record.to_dict()
    assert record["model_id"] == "abcd" and "model" not in record
    assert (record["slide_mpp"], record["proc_mpp"], record["phases"]) == (0.499, 0.5, 1)
    assert plan.store_meta["run"] == record
    assert plan.store_meta["tissue_regions"] == list(plan.tissue_indices)
    assert plan.exports.density_mask.sum() == plan.mask.sum()  # all of it covered
    # a stricter tissue fraction drops regions, and their area, and is another run
    strict = _plan(model, SAMPLE_SLIDE, SlideConfig(tmp_path, region_size=800,
                   min_tissue_fraction=0.5, model_id="abcd"), [])  # fmt: skip
    assert set(strict.tissue_indices) < set(plan.tissue_indices)
    assert strict.tissue_mm2 < plan.tissue_mm2
    assert strict.record.differences(record) == "min_tissue_fraction: 0.0 -> 0.5"


def test_the_plan_of_a_seed_format_slide_at_four_phases(bundled, tmp_path):
    model, _ = bundled
    lines: list[str] = []
    plan = _plan(model, SLIDE_A, SlideConfig(tmp_path, phases=4), lines)
    frame = plan.frame
    # 0.25 um/px for a 0.5 um/px model: regions read at 0.25, shrunk by 2 at 4 phases
    assert (frame.proc_mpp, frame.mpp, frame.n_phases, frame.k) == (0.5, 0.25, 4, 2)
    assert frame.phases.n == 4 and frame.phases.zoom == 0.5
    assert (frame.width, frame.height) == (2048, 3584)
    assert any("4 sub-pixel phases" in line for line in lines)
    assert plan.record.to_dict()["phases"] == 4 and plan.store_meta["phases"] == 4
    assert len(plan.tissue_indices) >= 1 and plan.tissue_mm2 > 0


def _disk_slide(name: str = "s") -> ArraySlide:
    centres = [(x, y) for y in range(30, 640, 41) for x in range(30, 660, 41)]
    image = disk_image((660, 690), centres)
    image[:, 480:] = 255  # glass on the right: those regions hold no tissue
    return ArraySlide(Path(f"{name}.svs"), image, MPP)


def _config(out: Path, **kw) -> SlideConfig:
    return SlideConfig(out, proc_mpp=MPP, region_size=328, quiet=True, post_proc_workers=0, **kw)


def test_segment_stores_the_plans_tissue_regions_and_resumes_with_none_left(tmp_path):
    slide, config = _disk_slide(), _config(tmp_path)
    context = SlideContext(lambda line: None, tissue_fn=dark_tissue)
    model = BlobNet()
    plan = prepare_slide(model, slide, config, context, "s")
    assert 0 < len(plan.tissue_indices) < len(plan.regions)
    store_path = output_paths(tmp_path, "s")["store"]
    with NucleusStore(store_path, plan.store_meta) as store:
        done = segment(model, slide, plan, store, config, context)
        assert store.done_regions() == set(plan.tissue_indices)
        n = store.count()
        assert n > 100 and done.regions_run == len(plan.tissue_indices) and done.windows > 0
        assert store.meta["hv_ranges"]  # measured once, kept
        again = segment(model, slide, plan, store, config, context)
        assert (again.regions_run, again.windows) == (0, 0) and store.count() == n
    assert not output_paths(tmp_path, "s")["summary"].exists()  # finishing is not segment's


def test_finish_writes_the_exports_and_summary_from_a_store(tmp_path):
    slide, config = _disk_slide(), _config(tmp_path, model_id="abcd", model_name="shown")
    context = SlideContext(lambda line: None, tissue_fn=dark_tissue)
    model = BlobNet()
    plan = prepare_slide(model, slide, config, context, "s")
    paths = output_paths(tmp_path, "s")
    with NucleusStore(paths["store"], plan.store_meta) as store:
        done = segment(model, slide, plan, store, config, context)
        summary = finish(store, plan, config, done, time.perf_counter(), lambda line: None)
        exports = {k: paths[k].read_bytes() for k in ("geojson", "csv", "json", "overlay")}
        # the exports again from the same store, nothing run: the same bytes
        for k in exports:
            paths[k].unlink()
        later = finish(store, plan, config, Segmented(0, 0, 0.0), time.perf_counter(), print)
    assert {k: paths[k].read_bytes() for k in exports} == exports
    assert summary["nuclei"] == later["nuclei"] > 100
    assert summary["run"] == plan.record.to_dict() and summary["model"] == "shown"
    assert summary["tissue_mm2"] == round(plan.tissue_mm2, 6)
    assert (summary["regions_tissue"], summary["regions_this_run"]) == (done.regions_run,) * 2
    assert later["regions_this_run"] == 0 and later["network_windows_this_run"] == 0
    assert paths["summary"].is_file()


# ------------------------------------------------------------------ the run record
def test_a_run_record_compares_only_its_own_fields_in_order():
    record = RunRecord.of("aaaa", precision="fp32", phases=1)
    assert record.to_dict() == {"model_id": "aaaa", "precision": "fp32", "phases": 1}
    assert list(record.to_dict()) == ["model_id", "precision", "phases"]
    # an older record with its display name besides: the same run
    assert record.differences({**record.to_dict(), "model": "lite, best.pth"}) is None
    other = {"model_id": "bbbb", "precision": "fp32", "phases": 4}
    assert record.differences(other) == "model_id: 'bbbb' -> 'aaaa'; phases: 4 -> 1"
    assert record.differences({}) == (
        "model_id: None -> 'aaaa'; precision: None -> 'fp32'; phases: None -> 1"
    )
    with pytest.raises(ValueError, match="display name"):
        RunRecord.of("aaaa", model="lite-v2 (bundled)")
    with pytest.raises(ValueError, match="once"):
        RunRecord("aaaa", (("phases", 1), ("phases", 2)))
