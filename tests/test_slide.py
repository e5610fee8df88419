"""Slide mode (`hovernet.infer.slide`): exact answers, seams, exports, skipping, bad input.

The network is `BlobNet`, a local stand-in with HoVer-Net's interface (the real network is far
too slow on a CPU for slide-sized tests); slides are in-memory `ArraySlide`s with the methods of
`hovernet.io.wsi.Slide`.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA
from shapely.geometry import shape
from support.fixed_split import my_slides
from support.slide_helpers import ArraySlide, dark_tissue, disk_image

from hovernet.errors import HoverNetError
from hovernet.grids import Grid
from hovernet.infer.hv_calibration import calibration_windows
from hovernet.infer.predict import segment_image
from hovernet.infer.ranks import parse_shard
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.io.inputs import list_slides
from hovernet.io.slide_exports import output_paths
from hovernet.io.store import NucleusStore
from hovernet.model.standin import ANCHOR, BlobNet

MPP = 0.25
MONUSEG = DATA / "monuseg" / "images"


def run(image, out, name="slide", slide_mpp=MPP, tissue_fn=dark_tissue, **kw):
    """Run one in-memory slide through slide mode; returns (result, paths)."""
    config = SlideConfig(
        out, proc_mpp=kw.pop("proc_mpp", MPP), region_size=kw.pop("region_size", 328), quiet=True,
        **kw,
    )  # fmt: skip
    slide = ArraySlide(Path(f"{name}.svs"), image, slide_mpp)
    results = run_slides(
        BlobNet(),
        [slide.path],
        config,
        log=lambda line: None,
        opener=lambda path, cfg: slide,
        tissue_fn=tissue_fn,
    )
    return results[0], output_paths(out, name)


def all_tissue(slide, name, config):
    """The whole slide is tissue (tile mode keeps every nucleus: compare like with like)."""
    thumb, thumb_mpp = slide.thumbnail(512)
    return thumb, thumb_mpp, np.ones(thumb.shape[:2], bool), thumb_mpp


def disk_centres(width, height, step=41, offset=(9, 13)):
    xs = np.arange(offset[0], width - 8, step)
    ys = np.arange(offset[1], height - 8, step)
    # BlobNet's anchor blinds the top-left ANCHOR px of every 164-px output square
    clear = ANCHOR + 9
    return [(x, y) for y in ys for x in xs if not (x % 164 < clear and y % 164 < clear)]


@pytest.fixture(scope="module")
def disk_run(tmp_path_factory):
    # 700 x 690 at 328-px cores: 3 x 3 regions, many disks on or across core borders
    centres = disk_centres(700, 690)
    image = disk_image((690, 700), centres)
    out = tmp_path_factory.mktemp("disks")
    result, paths = run(image, out, post_proc_workers=0)
    return result, paths, centres


def test_synthetic_disks_each_found_once_where_they_are(disk_run):
    result, paths, centres = disk_run
    assert result.status == "done", result.reason
    with NucleusStore(paths["store"], {}) as store:
        records = list(store.nuclei())
        assert store.n_cut() == 0
        assert len(store.done_regions()) == result.summary["regions_tissue"] >= 8
    found = np.array([r["xy"] for r in records])
    assert len(found) == len(centres)
    dist = np.linalg.norm(found[:, None] - np.array(centres, float)[None], axis=2)
    assert (dist.min(axis=1) < 0.5).all()  # each found nucleus sits on a disk
    assert sorted(dist.argmin(axis=1)) == list(range(len(centres)))  # each disk found once
    areas = [r["measurements"]["area"] for r in records]
    assert min(areas) > 0.9 * np.pi * 7**2


def test_exports_parse_and_agree(disk_run):
    result, paths, centres = disk_run
    n = len(centres)
    doc = json.loads(gzip.open(paths["geojson"], "rt").read())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == n
    ids = set()
    for feature in doc["features"]:
        poly = shape(feature["geometry"])
        assert poly.is_valid and poly.area > 100 and poly.exterior.is_ccw
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"]
        ids.add(feature["id"])
    assert len(ids) == n
    orig = json.loads(paths["json"].read_text())
    assert orig["mag"] == pytest.approx(40.0) and len(orig["nuc"]) == n
    assert list(orig["nuc"]) == [str(i) for i in range(1, n + 1)]
    for rec in orig["nuc"].values():
        (rmin, cmin), (rmax, cmax) = rec["bbox"]
        contour = np.array(rec["contour"])
        # bbox rows first, whole-slide coordinates: it holds the contour's x (cols) and y (rows)
        assert cmin <= contour[:, 0].min() and contour[:, 0].max() < cmax
        assert rmin <= contour[:, 1].min() and contour[:, 1].max() < rmax
        assert cmin <= rec["centroid"][0] <= cmax and rmin <= rec["centroid"][1] <= rmax
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == n and rows[0]["id"] == "1"
    assert float(rows[0]["area"]) > 100 and rows[0]["type_name"]
    summary = json.loads(paths["summary"].read_text())
    assert summary["nuclei"] == n == sum(summary["nuclei_per_class"].values())
    assert summary["tissue_mm2"] > 0 and summary["nuclei_per_mm2"] > 0
    assert summary["regions_tissue"] >= 8 and summary["wall_s"] > 0
    overlay = cv2.imread(str(paths["overlay"]))
    assert overlay is not None and overlay.shape[:2] == (345, 350)  # the thumbnail
    assert not list(paths["json"].parent.glob(".*tmp*"))


def test_finished_slide_is_skipped_and_overwrite_redoes_it(disk_run, tmp_path):
    _, paths, _ = disk_run
    image = np.full((200, 200, 3), 255, np.uint8)
    result, _ = run(image, paths["summary"].parent, post_proc_workers=0)
    assert result.status == "skipped" and "overwrite" in result.reason
    # no tissue: reported, exported empty, not a failure
    result, empty = run(image, tmp_path, post_proc_workers=0)
    assert result.status == "done" and result.n_nuclei == 0
    assert json.loads(empty["summary"].read_text())["regions_tissue"] == 0
    cv2.circle(image, (60, 60), 7, (40, 40, 40), -1)
    result, _ = run(image, tmp_path, post_proc_workers=0, overwrite=True)
    assert result.status == "done" and result.n_nuclei == 1


def test_interrupted_slide_resumes_to_the_same_exports(disk_run, tmp_path):
    _, ref, centres = disk_run

    image = disk_image((690, 700), centres)
    config = SlideConfig(tmp_path, proc_mpp=MPP, region_size=328, quiet=True, post_proc_workers=0)
    # slide mode first reads a few windows to measure the HV ranges, then the regions
    _, _, mask, mask_mpp = dark_tissue(ArraySlide(Path("s.svs"), image, MPP), "slide", config)
    n_calibration = len(calibration_windows(mask, Grid(mask_mpp), Grid(MPP), 700, 690))

    class Failing(ArraySlide):
        reads = 0

        def read(self, *args):
            Failing.reads += 1
            if Failing.reads > n_calibration + 4:  # 4 regions read, then the disk goes
                raise OSError("disk gone")
            return super().read(*args)

    for cls in (Failing, ArraySlide):
        slide = cls(Path("slide.svs"), image, MPP)
        (result,) = run_slides(
            BlobNet(), [slide.path], config, lambda line: None, lambda p, c, s=slide: s, dark_tissue
        )
        if cls is Failing:
            assert result.status == "failed" and "disk gone" in result.reason
            with NucleusStore(output_paths(tmp_path, "slide")["store"], {}) as store:
                assert 0 < len(store.done_regions()) <= 4
    assert result.status == "done" and result.summary["regions_this_run"] < 8
    assert exports_of(output_paths(tmp_path, "slide")) == exports_of(ref)


def test_changed_settings_are_refused_on_resume(tmp_path):
    with NucleusStore(tmp_path / "s.db", {"core": 328, "proc_mpp": 0.25}):
        pass
    with pytest.raises(HoverNetError, match="other settings.*core: 328 -> 656.*--overwrite"):
        NucleusStore(tmp_path / "s.db", {"core": 656, "proc_mpp": 0.25})
    # through slide mode: an unfinished slide (no summary) resumed with another region size
    image = disk_image((700, 690), disk_centres(690, 700))
    first, paths = run(image, tmp_path / "out", post_proc_workers=0)
    assert first.status == "done"
    paths["summary"].unlink()  # as if killed before the end
    again, _ = run(image, tmp_path / "out", post_proc_workers=0, region_size=656)
    assert again.status == "failed"
    # 700 px in 2 regions: cores of 492 (3 x 164)
    assert re.search(r"other settings.*core: 328 -> 492.*--overwrite", again.reason)
    assert not paths["summary"].exists()


def mosaic(n_side: int, tile: int = 1000) -> np.ndarray:
    from hovernet.io.slides import read_rgb

    files = sorted(MONUSEG.glob("*.png"))[: n_side * n_side]
    rows = [
        np.concatenate([read_rgb(f)[:tile, :tile] for f in files[r * n_side : (r + 1) * n_side]], 1)
        for r in range(n_side)
    ]
    return np.concatenate(rows, 0)


def filled(contour, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.fillPoly(mask, [np.asarray(contour, np.int32).reshape(-1, 1, 2) - [x0, y0]], 1)
    return mask.astype(bool)


def compare_with_tile_mode(image, out, region_size, workers, proc_mpp=MPP):
    """Slide mode's nuclei against tile mode's on the whole image; with a `proc_mpp` coarser
    than the slide's, both run at 4 sub-pixel phases."""
    result, paths = run(
        image,
        out,
        region_size=region_size,
        post_proc_workers=workers,
        proc_mpp=proc_mpp,
        tissue_fn=all_tissue,
        precision="fp32",  # as tile mode below
        phases=None if proc_mpp == MPP else 4,
    )
    assert result.status == "done", result.reason
    kw = {} if proc_mpp == MPP else {"input_mpp": MPP, "proc_mpp": proc_mpp, "phases": 4}
    _, tile_nuclei, _ = segment_image(BlobNet(), image, batch_size=8, precision="fp32", **kw)
    height, width = image.shape[:2]
    tile_labels = np.zeros((height, width), np.int32)
    for nid, rec in tile_nuclei.items():
        cv2.fillPoly(tile_labels, [np.asarray(rec["contour"], np.int32).reshape(-1, 1, 2)], nid)
    with NucleusStore(paths["store"], {}) as store:
        records = list(store.nuclei())
        assert store.n_cut() == 0  # none cut at a region border
    coverage = np.zeros((height, width), np.uint8)
    matched = 0
    for rec in records:
        (rmin, cmin), (rmax, cmax) = rec["bbox"]
        box = (cmin, rmin, cmax, rmax)
        mask = filled(rec["contour"], box)
        coverage[rmin:rmax, cmin:cmax] += mask
        labels = tile_labels[rmin:rmax, cmin:cmax][mask]
        labels = labels[labels > 0]
        if not labels.size:
            continue
        other = tile_nuclei[int(np.bincount(labels).argmax())]
        (r0, c0), (r1, c1) = other["bbox"]
        union_box = (min(c0, cmin), min(r0, rmin), max(c1, cmax), max(r1, rmax))
        a, b = filled(rec["contour"], union_box), filled(other["contour"], union_box)
        if (a & b).sum() / (a | b).sum() >= 0.9:
            matched += 1
    n_tile = len(tile_nuclei)
    assert len(records) > 200 and abs(len(records) - n_tile) <= 0.005 * n_tile, (
        len(records),
        n_tile,
    )
    assert matched >= 0.995 * max(len(records), n_tile)
    # no two output nuclei overlap (beyond the one-pixel outlines of touching neighbours)
    assert (coverage > 1).sum() <= 0.002 * (coverage > 0).sum()
    return result


def test_seams_match_whole_image_tile_mode(tmp_path):
    # 2 x 2 MoNuSeg tiles cut to 984 px: 3 x 3 regions of 328 px, two seams each way, one at
    # the tiles' own border (x or y = 1000 is not on a seam: that is checked by the slow test)
    image = mosaic(2)[:984, :984]
    compare_with_tile_mode(image, tmp_path, region_size=328, workers=0)


def test_seams_match_whole_image_tile_mode_with_phases(tmp_path):
    # the slide at 0.25 um/px, the network at 0.5: regions are read at 0.25 and run at 4
    # phases; 984 px: 2 x 2 regions of 656 px (whole multiples of twice the output size)
    image = mosaic(2)[:984, :984]
    result = compare_with_tile_mode(image, tmp_path, region_size=656, workers=0, proc_mpp=0.5)
    summary = result.summary
    assert (summary["phases"], summary["proc_mpp"], summary["outline_mpp"]) == (4, 0.5, 0.25)
    assert summary["regions_tissue"] == 4
    one, _ = run(image, tmp_path / "one", proc_mpp=0.5, region_size=656, phases=1)
    assert one.summary["outline_mpp"] == 0.5 and one.summary["phases"] == 1
    assert summary["network_windows_this_run"] > 3 * one.summary["network_windows_this_run"]
    with pytest.raises(HoverNetError, match="--phases must be one of 1, 2, 4, got 3"):
        SlideConfig(tmp_path, phases=3)
    failed, _ = run(image[:400, :400], tmp_path / "same", name="s", phases=4)  # 0.25 at 0.25
    assert failed.status == "failed" and "--phases 4 needs images" in failed.reason


@pytest.mark.slow
def test_seams_match_whole_image_tile_mode_4096(tmp_path):
    # 3 x 3 regions of 1476 px. BlobNet's "nuclei" on MoNuSeg merge into blobs of up to 862 px,
    # far wider than the margin: cores of 820 or 1148 px cut two of them (stand-in artefacts,
    # not nuclei; real ones are under NUCLEUS_MARGIN), this layout none
    image = mosaic(5)[:4096, :4096]
    compare_with_tile_mode(image, tmp_path, region_size=1500, workers=2)


def test_list_slides_and_bad_inputs(tmp_path):
    for name in ("b.svs", "a.tif", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_slides(tmp_path)] == ["a.tif", "b.svs"]
    assert [p.name for p in list_slides(str(tmp_path / "*.svs"))] == ["b.svs"]
    listing = tmp_path / "slides.txt"
    listing.write_text("# my slides\nb.svs\n\na.tif\n")
    assert [p.name for p in list_slides(listing)] == ["b.svs", "a.tif"]
    assert list_slides(tmp_path / "a.tif") == [tmp_path / "a.tif"]
    with pytest.raises(HoverNetError, match="does not exist: pass a slide, a folder"):
        list_slides(tmp_path / "missing.svs")
    with pytest.raises(HoverNetError, match="no slides match"):
        list_slides(str(tmp_path / "*.ndpi"))
    listing.write_text("gone.svs\n")
    with pytest.raises(HoverNetError, match="slides.txt lists slides that do not exist: .*gone"):
        list_slides(listing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HoverNetError, match="no slides in .*empty"):
        list_slides(tmp_path / "empty")


def test_shards_split_slides_without_double_work():
    slides = [Path(f"s{i}.svs") for i in range(7)]
    parts = [my_slides(slides, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(slides)
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (0, 1)
    with pytest.raises(HoverNetError, match="i must be in 0..n-1"):
        parse_shard("4/4")
    with pytest.raises(HoverNetError, match="write it as i/n"):
        parse_shard("two")


def test_failing_slide_is_reported_and_others_go_on(tmp_path):
    good = ArraySlide(Path("good.svs"), disk_image((300, 300), [(100, 100)]), MPP)

    def opener(path, cfg):
        if path.stem == "bad":
            raise HoverNetError(f"{path}: cannot read the slide")
        return good

    config = SlideConfig(tmp_path, proc_mpp=MPP, quiet=True, post_proc_workers=0)
    lines = []
    results = run_slides(
        BlobNet(), [Path("bad.svs"), good.path], config, lines.append, opener, dark_tissue
    )
    assert [r.status for r in results] == ["failed", "done"]
    assert "bad.svs: cannot read the slide" in results[0].reason
    assert "bad: FAILED" in lines[0] and "good: 1 nuclei" in lines[1]
    # a rerun redoes only what failed: the good slide is finished, the bad one fails again
    again = run_slides(BlobNet(), [Path("bad.svs"), good.path], config, lines.append, opener,
                       dark_tissue)  # fmt: skip
    assert [r.status for r in again] == ["failed", "skipped"]


# ----------------------------------------------------------------------------------------------
# separate processes: resume after SIGKILL, ranks sharing slides


WORKER = Path(__file__).parent / "support" / "slide_rank_process.py"


def worker(slide_dir, out, region_size=328, workers=1, env=None, **kw):
    import os
    import subprocess
    import sys

    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **(env or {})}
    args = [sys.executable, str(WORKER), str(slide_dir), str(out), str(region_size), str(workers)]
    return subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, text=True, **kw)


def exports_of(paths) -> dict:
    return {
        key: gzip.decompress(paths[key].read_bytes())
        if key == "geojson"
        else paths[key].read_bytes()
        for key in ("geojson", "json", "csv")
    }


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_gives_the_same_exports(tmp_path):
    import random
    import signal
    import sqlite3
    import time

    slide_dir = tmp_path / "slides"
    slide_dir.mkdir()
    np.save(slide_dir / "s.npy", mosaic(2)[:1312, :1148])
    reference = worker(slide_dir, tmp_path / "ref", workers=0)
    assert reference.wait(timeout=300) == 0
    ref = output_paths(tmp_path / "ref", "s")
    n_regions = json.loads(ref["summary"].read_text())["regions_tissue"]

    out = tmp_path / "out"
    proc = worker(slide_dir, out, workers=1)
    store = output_paths(out, "s")["store"]
    target = random.Random().randint(1, n_regions - 2)  # a random number of stored regions
    deadline = time.time() + 240
    while time.time() < deadline:
        if store.exists():
            with contextlib.closing(sqlite3.connect(store)) as db:
                with contextlib.suppress(sqlite3.OperationalError):
                    if db.execute("SELECT COUNT(*) FROM regions").fetchone()[0] >= target:
                        break
        time.sleep(random.uniform(0.0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not output_paths(out, "s")["summary"].exists()  # killed before the end
    with contextlib.closing(sqlite3.connect(store)) as db:
        stored = db.execute("SELECT COUNT(*) FROM regions").fetchone()[0]
    # the last regions can be stored faster than the polling sees them: the kill may land
    # after every region is stored and before the exports (the resume then only exports)
    assert target <= stored <= n_regions

    resumed = worker(slide_dir, out, workers=1)
    stdout, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stdout
    summary = json.loads(output_paths(out, "s")["summary"].read_text())
    assert summary["regions_this_run"] == n_regions - stored  # it went on from the stored ones
    assert exports_of(output_paths(out, "s")) == exports_of(ref)


@pytest.mark.slow  # two processes importing torch: ~15 s on 2 cores
def test_two_ranks_share_slides_without_double_work(tmp_path):
    import socket

    slide_dir = tmp_path / "slides"
    slide_dir.mkdir()
    for i in range(3):
        np.save(slide_dir / f"s{i}.npy", disk_image((200, 200), [(60 + 20 * i, 100)]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [
        worker(slide_dir, tmp_path / "out", workers=0, env={**env, "RANK": str(r)})
        for r in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    mine = [
        {line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("[")}
        for out in outs
    ]
    assert mine[0] | mine[1] == {"s0", "s1", "s2"} and not mine[0] & mine[1]
    results = json.loads(outs[0].split("RESULTS ", 1)[1])
    assert results == {f"s{i}": ["done", 1] for i in range(3)}


# ----------------------------------------------------------------------------------------------
# the command line, on a TIFF slide with a small real network


@pytest.fixture(scope="module")
def lite_checkpoint(tmp_path_factory) -> Path:
    import torch

    from hovernet.model.checkpoints import save_checkpoint
    from hovernet.model.registry import build_model

    torch.manual_seed(0)
    model = build_model("lite", 3).eval()
    path = tmp_path_factory.mktemp("model") / "lite.pth"
    save_checkpoint(path, model, mpp=0.5)
    return path


def tiff_slide(path: Path, image: np.ndarray, mpp: float | None = 0.25) -> Path:
    import tifffile

    kw = {}
    if mpp is not None:
        kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, tile=(256, 256), **kw)
    return path


def cli(args):
    from conftest import run_cli

    return run_cli(args)


def test_cli_wsi_end_to_end_skip_and_missing_mpp(tmp_path, lite_checkpoint):
    slides = tmp_path / "slides"
    slides.mkdir()
    image = mosaic(1)[:700, :640]
    tiff_slide(slides / "a.tif", image)
    tiff_slide(slides / "nompp.tif", image[:300, :300], mpp=None)
    out = tmp_path / "out"
    args = [
        "infer",
        f"--model_path={lite_checkpoint}",
        "--batch_size=4",
        "--nr_post_proc_workers=0",
        "wsi",
        f"--input_dir={slides}",
        f"--output_dir={out}",
        "--save_thumb",
        "--save_mask",
        "--save_label_map",
        "--region_size=448",
        "--phases=4",
        "--quiet",
    ]
    code, stdout, stderr = cli(args)
    assert code == 2, stdout + stderr
    assert "nompp" in stderr and "--slide_mpp" in stderr and "1 slide(s) failed" in stderr
    assert "a: " in stdout and "1 slides done" in stdout
    summary = json.loads((out / "a.summary.json").read_text())
    assert summary["proc_mpp"] == 0.5 and summary["dimensions"] == [640, 700]
    # the slide is at 0.25 um/px, the model at 0.5: 4 phases, outlines at 0.25
    assert (summary["phases"], summary["outline_mpp"]) == (4, 0.25)
    assert summary["mag"] == pytest.approx(40.0)
    for suffix in (
        ".geojson.gz",
        ".json",
        ".csv",
        ".overlay.png",
        ".thumb.png",
        ".mask.png",
        ".instances.tif",
        ".types.tif",
        ".db",
    ):
        assert (out / f"a{suffix}").is_file(), suffix
    import tifffile

    from hovernet.io.pyramid import decode_rgb24

    with tifffile.TiffFile(out / "a.instances.tif") as tif:
        labels = decode_rgb24(tif.pages[0].asarray())
    assert labels.shape == (700, 640) and labels.max() == summary["nuclei"]
    # the geojson is in level-0 pixels, here the JSON's outline pixels too
    doc = json.loads(gzip.open(out / "a.geojson.gz", "rt").read())
    orig = json.loads((out / "a.json").read_text())
    if doc["features"]:
        xs = np.array(doc["features"][0]["geometry"]["coordinates"][0])[:, 0]
        cx = orig["nuc"]["1"]["centroid"][0]
        assert xs.min() <= cx + 1 and cx - 1 <= xs.max()

    # again, with the MPP given: a is skipped, nompp runs
    code, stdout, stderr = cli([*args[:-1], "--slide_mpp=0.25"])
    assert code == 0, stderr
    assert "a: skipped" in stdout and "nompp: " in stdout


class _CountingPool:
    """A stand-in post-processing pool that runs jobs here and counts them."""

    def __init__(self):
        self.submitted = 0

    def submit(self, fn, *args):
        from concurrent.futures import Future

        from hovernet.infer.workers import _import

        self.submitted += fn is not _import  # jobs, not the start-up import
        future = Future()
        future.set_result(fn(*args))
        return future


def test_one_region_is_post_processed_here_without_the_pool(tmp_path):
    """A slide with a single tissue region has nothing to overlap: no worker is started for it,
    and the nuclei are those of a run with workers."""
    from hovernet.infer.slide import run_slide
    from hovernet.infer.slide_plan import SlideContext

    image = disk_image((300, 300), disk_centres(300, 300))
    nuclei = {}
    for region_size, expect_pool in ((328, False), (164, True)):
        pool = _CountingPool()
        slide = ArraySlide(Path("one.svs"), image, MPP)
        config = SlideConfig(
            tmp_path / str(region_size), proc_mpp=MPP, region_size=region_size, quiet=True,
            post_proc_workers=1,
        )  # fmt: skip
        context = SlideContext(lambda line: None, lambda p, c, s=slide: s, dark_tissue, pool)
        result = run_slide(BlobNet(), slide.path, config, context)
        assert result.status == "done"
        assert (pool.submitted > 0) is expect_pool
        assert result.summary["regions_this_run"] == (1 if not expect_pool else pool.submitted)
        nuclei[region_size] = result.n_nuclei
    assert nuclei[328] == nuclei[164] > 0


def test_windows_far_from_tissue_are_not_run_and_nuclei_do_not_change(tmp_path, monkeypatch):
    """The network skips windows more than the widest nucleus away from the tissue mask; a
    mask that cuts through tissue keeps exactly the nuclei of running every window, also
    disks whose centroid is in tissue right at a window's edge (x = 3 x 164 here)."""
    from hovernet.infer import slide as slide_mod

    edge = 3 * BlobNet().geometry.output_size
    centres = [c for c in disk_centres(1500, 1300) if abs(c[0] - edge) > 24]
    centres += [(edge - 4, y) for y in range(40, 1300, 60)]
    image = disk_image((1300, 1500), centres)

    def cut_mask(slide, name, config):  # tissue: a band on the left and a disc
        thumb, thumb_mpp = slide.thumbnail(2048)  # full resolution: the band ends at `edge`
        h, w = thumb.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        mask[:, :edge] = 1
        cv2.circle(mask, (int(w * 0.75), int(h * 0.7)), h // 10, 1, -1)
        return thumb, thumb_mpp, mask.astype(bool), thumb_mpp

    outcomes = {}
    for skip in (True, False):
        if not skip:
            monkeypatch.setattr(slide_mod._SlideRun, "near_tissue", lambda self, r, g: None)
        result, paths = run(
            image, tmp_path / str(skip), tissue_fn=cut_mask, post_proc_workers=0, region_size=820
        )
        assert result.status == "done", result.reason
        with NucleusStore(paths["store"], {}) as store:
            records = sorted((r["xy"], r["contour"].tolist()) for r in store.nuclei())
        outcomes[skip] = (result.summary["network_windows_this_run"], records)
    (run_some, kept), (run_all, expected) = outcomes[True], outcomes[False]
    assert kept == expected and len(kept) > 10
    assert sum(abs(xy[0] - (edge - 4)) < 1 for xy, _ in kept) >= 15  # the edge disks are kept
    assert run_some < 0.7 * run_all


def test_post_processing_workers_do_not_import_torch():
    """Slide- and tile-mode workers start and run their modules without torch (1.5 s of CPU
    saved per worker on a small machine)."""
    from support.slide_helpers import imports_torch

    from hovernet.infer.workers import make_pool, warm

    with make_pool(1) as pool:
        warm(pool, 1, "hovernet.infer.slide_worker")  # starts the process before any job
        assert len(pool._processes) == 1
        assert pool.submit(imports_torch, "hovernet.infer.slide_worker").result() is False
        assert pool.submit(imports_torch, "hovernet.infer.tile_worker").result() is False
        assert pool.submit(imports_torch, "hovernet.infer.slide").result() is True  # the check


@pytest.mark.slow  # 1312 x 1148 px of MoNuSeg, a whole run and three stopped-and-resumed ones
def test_a_run_stopped_after_any_region_resumes_to_the_same_bits(tmp_path):
    """Batches never mix two regions' windows, so a region's maps do not depend on where the
    previous run stopped: stopped after k regions and resumed, the exports equal a whole run's
    byte for byte (batches of 4, windows near tissue only, as in the SIGKILL test)."""
    from dataclasses import replace as _replace

    from hovernet.infer.slide import run_slide
    from hovernet.infer.slide_plan import SlideContext

    class Stop(Exception):
        pass

    image = mosaic(2)[:1312, :1148]
    slide = ArraySlide(Path("s.svs"), image, MPP)
    config = SlideConfig(
        tmp_path / "whole", proc_mpp=MPP, region_size=328, quiet=True, post_proc_workers=0,
        batch_size=4,
    )  # fmt: skip

    def go(model, cfg):
        context = SlideContext(lambda line: None, lambda p, c: slide, dark_tissue)
        return run_slide(model, slide.path, cfg, context)

    whole = go(BlobNet(), config)
    reference = exports_of(output_paths(config.output_dir, "s"))
    n = whole.summary["regions_tissue"]
    for k in (1, n // 2, n - 2):
        cfg = _replace(config, output_dir=tmp_path / f"stop{k}")
        store_path = output_paths(cfg.output_dir, "s")["store"]

        class StopAfter(BlobNet):
            def forward(self, x, k=k, store_path=store_path):
                if store_path.exists():
                    with NucleusStore(store_path, {}) as store:
                        if len(store.done_regions()) >= k:
                            raise Stop
                return super().forward(x)

        with pytest.raises(Stop):
            go(StopAfter(), cfg)
        resumed = go(BlobNet(), cfg)
        assert 0 < resumed.summary["regions_this_run"] < n
        assert exports_of(output_paths(cfg.output_dir, "s")) == reference, k
