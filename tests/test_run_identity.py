"""Issue 25: a run's identity is the checkpoint's hash and the settings that change nuclei (the
demo's folder is finished for `hovernet infer wsi`), a full disk is one line naming the folder
and the fix, one output name per input (`x.ome.tif` -> `x`), and the console says what it did."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli
from support.slide_helpers import ArraySlide, dark_tissue, disk_image

from hovernet.cli.options import unknown_option_hint
from hovernet.errors import HoverNetError
from hovernet.infer.claims import FileClaims
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.io.inputs import list_slides
from hovernet.io.names import output_stem
from hovernet.io.slide_exports import output_paths
from hovernet.io.store import NucleusStore
from hovernet.io.write_errors import write_failure
from hovernet.model.bundled import BUNDLED_NAME
from hovernet.model.standin import BlobNet
from hovernet.progress import Progress

MPP = 0.25
IMAGE = disk_image((400, 420), [(x, y) for y in range(50, 360, 41) for x in range(50, 380, 41)])
TYPES = "4 nucleus types (other, inflammatory, epithelial, spindle-shaped)"


def run(out, names=("s.svs",), model=None, **kw):
    """Slide mode on in-memory slides named `names` (the same image), BlobNet, 4 regions."""
    config = SlideConfig(out, proc_mpp=MPP, region_size=328, quiet=True, post_proc_workers=0, **kw)
    slides = {Path(n): ArraySlide(Path(n), IMAGE, MPP) for n in names}
    lines: list[str] = []
    results = run_slides(
        model or BlobNet(), list(slides), config, lines.append, lambda p, c: slides[p], dark_tissue
    )
    return results, lines


def _demo(argv: list[str]) -> tuple[int, str, str]:
    from hovernet.demo import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------ the run's identity
def test_the_demos_folder_is_finished_for_the_cli_with_the_same_model(tmp_path):
    # a 512-px crop of the demo slide that records its resolution, so the bundled model runs
    # in a few seconds; the demo and `hovernet infer wsi` at their defaults (the demo runs on
    # the CPU: the CLI is given --device=cpu, which is its default on a machine without CUDA)
    import openslide
    import tifffile

    from hovernet.demo import SAMPLE_SLIDE

    with openslide.OpenSlide(str(SAMPLE_SLIDE)) as slide:
        rgb = np.asarray(slide.read_region((700, 1200), 0, (512, 512)).convert("RGB"))
    crop = tmp_path / "cmu.ome.tif"  # and the output name leaves out the format mark
    res = 1e4 / 0.499
    tifffile.imwrite(crop, rgb, resolution=(res, res), resolutionunit="CENTIMETER")
    out = tmp_path / "demo_output"
    code, stdout, stderr = _demo(["--output-dir", str(out), "--slide", str(crop)])
    assert code == 0, stderr
    assert "4 nucleus types" in stderr and TYPES in stdout and "nr_types" not in stdout
    assert "segmented cmu.ome.tif in " in stdout
    summary = json.loads(output_paths(out, "cmu")["summary"].read_text())
    assert summary["model"] == f"{BUNDLED_NAME} (bundled)" and "model" not in summary["run"]
    assert len(summary["run"]["model_id"]) == 16
    stamp = output_paths(out, "cmu")["summary"].stat().st_mtime_ns
    # the demo again: already done, said so (no "segmented ... in 0.1 s")
    code, stdout, stderr = _demo(["--output-dir", str(out), "--slide", str(crop)])
    assert code == 0, stderr
    assert "already segmented" in stdout and "skipped" in stdout and "segmented cmu" not in stdout
    assert f"{summary['nuclei']} nuclei" in stdout
    # the CLI on the demo's folder: the same checkpoint and settings, so finished
    code, stdout, stderr = run_cli(
        ["infer", "--device=cpu", "wsi", "--input_dir", str(crop), "--output_dir", str(out)]
    )
    assert code == 0, stderr
    assert TYPES in stdout
    assert "[1/1] cmu: skipped" in stdout and "1 skipped as finished, 0 failed" in stdout
    assert output_paths(out, "cmu")["summary"].stat().st_mtime_ns == stamp
    assert not list(out.glob("cmu.ome.*"))


def test_an_older_summary_and_store_with_the_display_name_in_their_key_are_kept(tmp_path):
    (first,), _ = run(tmp_path, model_id="aaaa", model_name="old name")
    assert first.status == "done" and first.summary["model"] == "old name"
    assert "model" not in first.summary["run"]
    paths = output_paths(tmp_path, "s")
    # as an older version wrote them: the display name inside the run's key
    old_key = {**first.summary["run"], "model": "lite, nr_types=5, best.pth"}
    summary = {**first.summary, "run": old_key}
    paths["summary"].write_text(json.dumps(summary))
    with NucleusStore(paths["store"], {}) as store:
        store.set_meta("run", old_key)
        store.set_meta("model", "lite, nr_types=5, best.pth")
    (again,), lines = run(tmp_path, model_id="aaaa", model_name="new name")
    assert again.status == "skipped", again.reason
    # unfinished (no summary): the store resumes with nothing left to run
    paths["summary"].unlink()
    (resumed,), lines = run(tmp_path, model_id="aaaa", model_name="new name")
    assert resumed.status == "done", resumed.reason
    s = resumed.summary
    assert s["regions_this_run"] == 0 and s["nuclei"] == first.summary["nuclei"]
    n = s["regions_tissue"]
    assert f"{n} regions ({n} from the earlier run)" in lines[-1] and "mm^2/min" not in lines[-1]
    assert s["model"] == "new name"
    with NucleusStore(paths["store"], {}) as store:
        assert store.meta["model"] == "new name"
    # another checkpoint is still refused, naming the field that differs
    paths["summary"].unlink()
    (other,), _ = run(tmp_path, model_id="bbbb")
    assert other.status == "failed"
    assert 'run.model_id: "aaaa" -> "bbbb"' in other.reason and "--overwrite" in other.reason


def test_a_resumed_slide_says_how_many_regions_came_from_the_store(tmp_path):
    (first,), lines = run(tmp_path, model_id="aaaa")
    assert "from the earlier run" not in lines[-1] and "mm^2/min" in lines[-1]
    n = first.summary["regions_tissue"]
    paths = output_paths(tmp_path, "s")
    paths["summary"].unlink()
    db = sqlite3.connect(paths["store"])  # as if killed before the last region was stored
    with db:
        db.execute("DELETE FROM regions WHERE idx = (SELECT MAX(idx) FROM regions)")
    db.close()
    (resumed,), lines = run(tmp_path, model_id="aaaa")
    assert resumed.summary["regions_this_run"] == 1
    assert f"{n} regions ({n - 1} from the earlier run)" in lines[-1] and "mm^2/min" in lines[-1]


def test_progress_counts_a_resume_apart_and_rates_only_this_run():
    stream = io.StringIO()
    with Progress(4, "s", "regions", stream=stream, terminal=False) as bar:
        bar.resume(3)
        bar.advance(1, nuclei=7)
    assert "s: 4/4 regions (3 from the earlier run)" in stream.getvalue()
    assert "nuclei=7" in stream.getvalue()
    stream = io.StringIO()
    with Progress(4, "s", "regions", stream=stream, terminal=False) as bar:
        bar.resume(4)
    line = stream.getvalue()
    assert (
        "4/4 regions (4 from the earlier run)" in line and "/s" not in line and "each" not in line
    )


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_names_the_folder_and_the_fix_and_the_rerun_resumes(tmp_path, monkeypatch):
    import hovernet.infer.slide as slide_mod

    real = slide_mod.write_summary

    def full(path, summary):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(slide_mod, "write_summary", full)
    results, lines = run(tmp_path / "out", names=("a.svs", "b.svs"))
    (result,) = results  # the other slide is not started: it would fail alike
    assert result.status == "failed"
    reason = result.reason
    assert reason.startswith(f"cannot write to {tmp_path / 'out'}: the disk is full")
    assert "free space on the disk of" in reason and "--output_dir" in reason
    assert "rerun the same command to resume" in reason and "Errno" not in reason
    assert lines[-1] == f"[1/2] a: FAILED ({reason})"
    monkeypatch.setattr(slide_mod, "write_summary", real)
    results, _ = run(tmp_path / "out", names=("a.svs", "b.svs"))
    assert [r.status for r in results] == ["done", "done"]
    assert results[0].summary["regions_this_run"] == 0  # a's regions were stored before


def test_a_full_disk_in_tile_mode_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    import hovernet.infer.tile as tile_mod

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), disk_image((200, 220), [(60, 70), (150, 120)]))
    out = tmp_path / "out"

    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "json" / "a.json"))

    monkeypatch.setattr(tile_mod, "finish_tile", full)
    config = TileConfig((folder,), out, post_proc_workers=0)
    with pytest.raises(HoverNetError) as info:
        run_tile(BlobNet(), config, log=lambda line: None)
    message = str(info.value)
    assert message.startswith(f"cannot write to {out}: the disk is full")
    assert "--output_dir" in message and "finished images are skipped" in message


def test_write_failures_are_told_only_for_the_output_folder(tmp_path):
    out = tmp_path / "out"
    resume = "rerun"
    read_only = OSError(errno.EROFS, "Read-only file system", str(out / "a.db"))
    assert "it is read-only" in write_failure(read_only, out, resume)
    denied = PermissionError(errno.EACCES, "Permission denied", str(out / "a.csv"))
    assert "permission denied" in write_failure(denied, out, resume)
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert "quota" in write_failure(quota, out, resume)
    # an input the process may not read, or another error, is not the output folder's
    unreadable = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "in.svs"))
    assert write_failure(unreadable, out, resume) is None
    assert write_failure(ValueError("x"), out, resume) is None
    # SQLite says a full disk in its own words
    db = sqlite3.OperationalError("database or disk is full")
    db.sqlite_errorcode = 13
    assert "the disk is full" in write_failure(db, out, resume)


# ------------------------------------------------------------------ one output name per input
@pytest.mark.parametrize(
    "name, stem",
    [("x.ome.tif", "x"), ("X.OME.TIFF", "X"), ("x.svs", "x"), ("case.2024.svs", "case.2024"),
     ("ome.tif", "ome"), (".ome.tif", ".ome")],
)  # fmt: skip
def test_output_stem_drops_the_suffix_and_a_format_mark(name, stem):
    assert output_stem(Path("/data") / name) == stem


def test_an_ome_tiff_slide_names_its_outputs_store_and_claim_without_ome(tmp_path):
    (result,), lines = run(tmp_path, names=("x.ome.tif",))
    assert result.status == "done" and result.name == "x" and lines[-1].startswith("[1/1] x: ")
    assert output_paths(tmp_path, "x")["summary"].is_file()
    assert output_paths(tmp_path, "x")["store"].is_file()
    assert not list(tmp_path.glob("x.ome*"))
    # the GeoJSON's feature ids derive from the name: those of a slide named x.svs
    run(tmp_path / "plain", names=("x.svs",))
    ids = [_feature_ids(folder) for folder in (tmp_path, tmp_path / "plain")]
    assert ids[0] and ids[0] == ids[1]
    assert FileClaims([], tmp_path).claim_path(Path("x.ome.tif")).name == "x.claim"
    (tmp_path / "in").mkdir()
    for name in ("x.ome.tif", "x.tif"):
        (tmp_path / "in" / name).write_bytes(b"")
    with pytest.raises(HoverNetError, match="would both write outputs named 'x'"):
        list_slides(tmp_path / "in")


def _feature_ids(folder: Path) -> list[str]:
    geojson = output_paths(folder, "x")["geojson"]
    return [f["id"] for f in json.loads(gzip.decompress(geojson.read_bytes()))["features"]]


# ------------------------------------------------------------------ console messages
def test_a_slide_run_that_writes_nothing_leaves_no_folder(tmp_path):
    def unreadable(path, config):
        raise HoverNetError(f"{path}: not a slide")

    out = tmp_path / "new" / "out"
    config = SlideConfig(out, quiet=True, post_proc_workers=0)
    (result,) = run_slides(BlobNet(), [Path("a.svs")], config, lambda line: None, unreadable)
    assert result.status == "failed" and not (tmp_path / "new" / "out").exists()


def test_tile_mode_names_no_folder_it_never_made(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out_i"
    code, stdout, stderr = run_cli(
        ["infer", "--device=cpu", "tile", "--input_dir", str(folder), "--output_dir", str(out)]
    )
    assert code == 2 and "broken.png" in stderr
    assert not out.exists() and "outputs in" not in stdout


def test_tile_progress_ends_on_the_total_of_nuclei(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(folder / f"{name}.png"), disk_image((200, 220), [(60, 70), (150, 120)]))
    config = TileConfig((folder,), tmp_path / "out", post_proc_workers=0)
    with Progress(None, "tile", "patches", stream=io.StringIO(), terminal=False) as bar:
        summary = run_tile(BlobNet(), config, log=lambda line: None, progress=bar)
    total = sum(summary.done.values())
    assert total > 0 and bar.fields["nuclei"] == total


def test_the_hint_to_move_a_model_option_uses_the_sub_command_typed():
    hint = unknown_option_hint("--model_path", "hovernet infer wsi")
    assert "hovernet infer --model_path=... wsi ..." in hint and "tile" not in hint
    hint = unknown_option_hint("--batch-size", "hovernet infer tile")
    assert "hovernet infer --batch_size=... tile ..." in hint


@pytest.mark.parametrize("command", ["wsi", "tile"])
def test_every_option_of_infer_wsi_and_tile_has_help(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(["infer", command, "--help"])
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 80
    lines = [line.split() for line in out.splitlines() if line.startswith("  --")]
    names = [parts[0] for parts in lines]
    assert "--output_dir" in names
    if command == "wsi":
        assert "--save_mask" in names and "--save_thumb" in names
    for parts in lines:
        rest = parts[2:] if len(parts) > 1 and parts[1].startswith("<") else parts[1:]
        assert rest and rest != ["[required]"], parts
