"""The cohort table (`cohort.csv`, `hovernet cohort`): one row per finished slide.

The rows' numbers against an independent computation (Python's `statistics` on the slide CSVs
and summaries), slide mode's incremental table against `hovernet cohort`'s rebuild, two
processes finishing slides at the same time (no row lost), the lock that makes them take turns,
and bad folders. Slide mode runs `BlobNet` on in-memory slides (seconds); the slow tests run the
bundled model on the demo slide and two `--shard` processes on the seed_format slides.

Run as a script, this file is the process of the concurrency test.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA, run_cli
from support.slide_helpers import ArraySlide, dark_tissue

from hovernet.errors import HoverNetError
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.io.cohort_files import (
    COHORT_CSV,
    read_nuclei,
    table_lock,
    update_after_slide,
    update_cohort_table,
)
from hovernet.metrics.cohort_table import feature_stats, slide_row
from hovernet.model.standin import BlobNet

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
DEMO = REPO / "hovernet" / "samples" / "CMU-1-Small-Region.svs"
TYPES = {0: ("background", (0, 0, 0)), 1: ("dark", (0, 0, 255)), 2: ("red", (255, 0, 0))}


def table(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["slide"]: row for row in csv.DictReader(fh)}


def number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


# ----------------------------------------------------------------------------------------------
# the pure rows


def test_feature_stats_are_those_of_the_finite_values():
    v = np.array([4.0, 1.0, np.nan, 9.0, 2.0, 7.0])
    s = feature_stats(v)
    kept = [4.0, 1.0, 9.0, 2.0, 7.0]
    q1, q2, q3 = statistics.quantiles(kept, n=4, method="inclusive")
    assert s["mean"] == pytest.approx(statistics.mean(kept))
    assert s["std"] == pytest.approx(statistics.stdev(kept))  # sample std, n - 1
    assert s["median"] == q2 == 4.0 and s["iqr"] == pytest.approx(q3 - q1)
    assert feature_stats(np.array([3.0])) == {"mean": 3.0, "std": None, "median": 3.0, "iqr": 0.0}
    assert feature_stats(np.array([np.nan, np.inf])) == dict.fromkeys(s)


def summary_of(per_class, tissue_mm2=2.0, mpp=0.5, type_info=True):
    info = {"0": ["background", [0, 0, 0]], "1": ["tumour", [255, 0, 0]], "2": ["lymph", [0, 0, 9]]}
    return {
        "slide": "slides/x.svs",
        "slide_mpp": mpp,
        "proc_mpp": 0.5,
        "phases": 1,
        "nuclei": sum(per_class.values()),
        "nuclei_per_class": per_class,
        "type_info": info if type_info else None,
        "model": "m",
        "run": {"model_id": "abc", "precision": "fp32"},
        "tissue": "automatic",
        "tissue_mm2": tissue_mm2,
        "version": "9.9",
    }


def test_slide_row_counts_densities_fractions_and_microns():
    types = ["tumour", "unclassified", "tumour", "tumour"]
    area = np.array([40.0, 8.0, 20.0, 60.0])  # level-0 px^2 at 0.5 um/px: x 0.25 -> um^2
    od_sum = np.array([4.0, 0.8, 2.0, 6.0])  # OD x level-0 px^2
    features = {"area": area, "nucleus_h_od_sum": od_sum}
    row = slide_row("x", summary_of({"unclassified": 1, "tumour": 3}), types, features)
    assert row["nuclei"] == 4 and row["nuclei_per_mm2"] == 2.0
    assert row["nuclei_tumour"] == 3 and row["nuclei_per_mm2_tumour"] == 1.5
    assert row["fraction_tumour"] == 0.75 and row["fraction_unclassified"] == 0.25
    assert row["nuclei_lymph"] == 0 and row["fraction_lymph"] == 0.0
    assert row["nuclei_unclassified"] == 1 and row["area_um2_mean_unclassified"] == 2.0
    assert row["area_um2_mean_tumour"] == pytest.approx(10.0) and row["area_um2_mean"] == 8.0
    assert row["nucleus_h_od_sum_um2_mean"] == pytest.approx(0.8)
    assert row["area_um2_mean_lymph"] is None and row["area_um2_std_unclassified"] is None
    assert "area_mean" not in row and "nucleus_h_od_sum_mean" not in row  # none in pixels
    assert (row["model"], row["model_id"], row["precision"], row["version"]) == (
        "m", "abc", "fp32", "9.9",
    )  # fmt: skip
    # the classes in id order, type 0 first as "unclassified", whatever the type info calls it
    counts = [k for k in row if k.startswith("nuclei_") and not k.startswith("nuclei_per")]
    assert counts == ["nuclei_unclassified", "nuclei_tumour", "nuclei_lymph"]


def test_no_tissue_or_no_nuclei_gives_empty_cells_not_inf():
    row = slide_row("x", summary_of({"tumour": 1}, tissue_mm2=0.0), ["tumour"], {})
    assert row["nuclei_per_mm2"] is None and row["nuclei_per_mm2_tumour"] is None
    empty = slide_row("x", summary_of({}), [], {"area": np.zeros(0)})
    assert empty["nuclei_per_mm2"] == 0.0 and empty["fraction_tumour"] is None
    assert empty["area_um2_mean"] is None


def test_untyped_slides_have_totals_only():
    row = slide_row("x", summary_of({"Nucleus": 2}, type_info=False), ["Nucleus"] * 2, {})
    assert row["nuclei"] == 2 and not any(k.endswith("_Nucleus") for k in row)


def test_nuclei_that_do_not_match_the_summary_are_refused():
    with pytest.raises(ValueError, match="3 nuclei, the summary says 4"):
        slide_row("x", summary_of({"tumour": 4}), ["tumour"] * 3, {})
    with pytest.raises(ValueError, match="per class"):
        slide_row("x", summary_of({"tumour": 2}), ["tumour", "lymph"], {})
    with pytest.raises(ValueError, match="slide_mpp"):
        slide_row("x", summary_of({}, mpp=None), [], {})


# ----------------------------------------------------------------------------------------------
# slide mode on in-memory slides


def blob_slide(seed: int, n: int = 40, size: int = 600) -> np.ndarray:
    """White slide with dark (type 1 for BlobNet) and red (type 2) disks of several sizes."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 255, np.uint8)
    for _ in range(n):
        x, y = rng.integers(40, size - 40, 2)
        colour = (44, 36, 40) if rng.random() < 0.6 else (200, 50, 50)
        cv2.circle(image, (int(x), int(y)), int(rng.integers(4, 10)), colour, -1)
    return image


def run_blob_slides(out: Path, images: dict[str, tuple[np.ndarray, float]]):
    slides = {Path(f"{n}.svs"): ArraySlide(Path(f"{n}.svs"), *im) for n, im in images.items()}
    config = SlideConfig(
        out, proc_mpp=0.25, region_size=328, quiet=True, post_proc_workers=0, type_info=TYPES
    )
    lines: list[str] = []
    results = run_slides(
        BlobNet(), list(slides), config, lines.append, lambda p, c: slides[p], dark_tissue
    )
    return results, lines


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    images = {
        "a": (blob_slide(0), 0.25),
        "b": (blob_slide(1, n=25), 0.25),
        "glass": (np.full((400, 400, 3), 255, np.uint8), 0.25),  # no tissue: 0 mm^2
    }
    results, lines = run_blob_slides(out, images)
    assert [r.status for r in results] == ["done"] * 3, lines
    return out


def expected_row(out: Path, name: str) -> dict[str, float | int | None]:
    """A slide's numbers from its summary and CSV, computed here with `statistics`."""
    summary = json.loads((out / f"{name}.summary.json").read_text())
    with open(out / f"{name}.csv", newline="") as fh:
        nuclei = list(csv.DictReader(fh))
    mpp, tissue = summary["slide_mpp"], summary["tissue_mm2"]
    classes = ["unclassified"] + [v[0] for k, v in sorted(summary["type_info"].items()) if k != "0"]
    want: dict = {"nuclei": len(nuclei), "tissue_mm2": tissue}
    want["nuclei_per_mm2"] = len(nuclei) / tissue if tissue else None
    for c in [None, *classes]:
        rows = [r for r in nuclei if c is None or r["type_name"] == c]
        suffix = "" if c is None else f"_{c}"
        if c is not None:
            want[f"nuclei{suffix}"] = len(rows)
            want[f"nuclei_per_mm2{suffix}"] = len(rows) / tissue if tissue else None
            want[f"fraction{suffix}"] = len(rows) / len(nuclei) if nuclei else None
        for col, name_um, power in [
            ("area", "area_um2", 2),
            ("perimeter", "perimeter_um", 1),
            ("eccentricity", "eccentricity", 0),
            ("nucleus_h_od_sum", "nucleus_h_od_sum_um2", 2),  # OD x level-0 px^2
            ("nucleus_h_glcm_entropy", "nucleus_h_glcm_entropy", 0),
        ]:
            v = [float(r[col]) * mpp**power for r in rows]
            want[f"{name_um}_mean{suffix}"] = statistics.mean(v) if v else None
            want[f"{name_um}_std{suffix}"] = statistics.stdev(v) if len(v) > 1 else None
            if len(v) > 1:
                q1, q2, q3 = statistics.quantiles(v, n=4, method="inclusive")
                want[f"{name_um}_median{suffix}"], want[f"{name_um}_iqr{suffix}"] = q2, q3 - q1
    return want


def test_slide_mode_writes_a_row_per_slide_that_matches_its_outputs(blob_run):
    rows = table(blob_run / COHORT_CSV)
    assert list(rows) == ["a", "b", "glass"]
    for name in ("a", "b"):
        want = expected_row(blob_run, name)
        assert want["nuclei_dark"] > 5 and want["nuclei_red"] > 5  # both classes present
        for key, value in want.items():
            got = number(rows[name][key])
            assert got == (None if value is None else pytest.approx(value, rel=1e-9)), key
        summary = json.loads((blob_run / f"{name}.summary.json").read_text())
        assert rows[name]["model_id"] == summary["run"]["model_id"]
        assert float(rows[name]["slide_mpp"]) == 0.25 and rows[name]["phases"] == "1"
        assert rows[name]["version"] == summary["version"] != ""
    glass = rows["glass"]
    assert glass["tissue_mm2"] == "0.0" and glass["nuclei"] == "0"
    assert glass["nuclei_per_mm2"] == glass["fraction_dark"] == glass["area_um2_mean"] == ""


def test_rebuild_equals_the_incremental_table(blob_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    incremental = (out / COHORT_CSV).read_bytes()
    (out / COHORT_CSV).unlink()
    code, stdout, stderr = run_cli(["cohort", str(out)])
    assert code == 0, stderr
    assert "3 slides" in stdout and (out / COHORT_CSV).read_bytes() == incremental


def test_kept_rows_are_not_recomputed_unless_the_slide_is_fresh(blob_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    before = (out / COHORT_CSV).read_bytes()
    (out / "a.csv").write_text("garbage\n")  # read only when a's row is recomputed
    assert update_cohort_table(out, ["b"]) == 3 and (out / COHORT_CSV).read_bytes() == before
    with pytest.raises(HoverNetError, match=r"a\.csv is not a slide-mode CSV.*--overwrite"):
        update_cohort_table(out, ["a"])
    assert (out / COHORT_CSV).read_bytes() == before  # refused: the old table is untouched
    (out / "b.summary.json").unlink()  # b no longer finished (an --overwrite rerun began)
    update_cohort_table(out, [])
    assert list(table(out / COHORT_CSV)) == ["a", "glass"]


def test_a_skipped_slide_fills_a_missing_table(blob_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    before = (out / COHORT_CSV).read_bytes()
    (out / COHORT_CSV).unlink()
    results, _ = run_blob_slides(out, {"a": (blob_slide(0), 0.25)})  # finished before
    assert results[0].status == "skipped" and (out / COHORT_CSV).read_bytes() == before


def test_extra_numeric_csv_columns_are_summarised_and_text_ones_left_out(blob_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    with open(out / "a.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0] += ["extra_score", "note"]
    for i, r in enumerate(rows[1:]):
        r += ["" if i == 0 else str(i), "text"]
    with open(out / "a.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    names, features = read_nuclei(out / "a.csv")
    assert "note" not in features and np.isnan(features["extra_score"][0])
    assert len(names) == len(rows) - 1
    assert not {"id", "type", "centroid_x", "bbox_rmin", "prob_dark"} & set(features)
    update_cohort_table(out)
    row = table(out / COHORT_CSV)["a"]
    values = list(range(1, len(rows) - 1))  # the empty first cell is left out
    assert float(row["extra_score_mean"]) == pytest.approx(statistics.mean(values))
    assert "note_mean" not in row
    assert table(out / COHORT_CSV)["b"]["extra_score_mean"] == ""  # b has no such column


def test_the_quick_csv_reader_reads_what_the_cell_reader_reads(blob_run, tmp_path):
    from hovernet.io.cohort_files import _read_cells, _read_numbers, is_feature

    with open(blob_run / "a.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, t = rows[0], rows[0].index("type_name")
    wanted = {i: c for i, c in enumerate(header) if is_feature(c)}
    path = tmp_path / "a.csv"
    rows[1][t] = 'odd, "class" #1'  # quoted by the csv writer
    for r in (2, 3):  # empty cells (no value) in the middle and at the end of rows
        rows[r][max(wanted)] = rows[r][min(wanted)] = rows[r][min(wanted) + 1] = ""
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    quick, cells = _read_numbers(path, t, wanted), _read_cells(path, header, t, wanted)
    assert np.isnan(quick[1][header[max(wanted)]][1:3]).all()
    assert list(quick[0]) == cells[0] and cells[0][0] == 'odd, "class" #1'
    assert list(quick[1]) == list(cells[1]) == [header[i] for i in wanted]
    assert all(np.array_equal(quick[1][k], cells[1][k], equal_nan=True) for k in cells[1])
    rows[4][max(wanted)] = "n/a"  # text: the quick reader declines
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    assert _read_numbers(path, t, wanted) is None
    area = [float(r[header.index("area")] or "nan") for r in rows[1:]]
    assert np.array_equal(quick[1]["area"], area, equal_nan=True)
    header_only = tmp_path / "empty.csv"
    header_only.write_text(",".join(header) + "\n")
    assert _read_numbers(header_only, t, wanted)[1]["area"].shape == (0,)


# ----------------------------------------------------------------------------------------------
# processes finishing slides at the same time


def worker(out: Path, source: Path, go: Path, names: list[str]) -> None:
    """Once `go` exists, finish `names` one after the other as slide mode does (CSV, then the
    summary last, each renamed into place), updating the table after each."""
    Path(f"{go}.{names[0]}.ready").touch()
    while not go.exists():
        time.sleep(0.001)
    for name in names:
        for suffix in (".csv", ".summary.json"):
            tmp = out / f".{name}{suffix}.part"
            shutil.copyfile(source / f"a{suffix}", tmp)
            os.replace(tmp, out / f"{name}{suffix}")
        update_after_slide(out, name, "done", print)


def spawn(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(HERE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_two_processes_finishing_slides_together_lose_no_row(blob_run, tmp_path):
    out, source = tmp_path / "out", tmp_path / "source"
    out.mkdir()
    source.mkdir()
    for suffix in (".csv", ".summary.json"):
        shutil.copy(blob_run / f"a{suffix}", source)
    go = tmp_path / "go"
    names = [[f"p{p}_{i:02d}" for i in range(12)] for p in (0, 1)]
    procs = [spawn(str(out), str(source), str(go), *n) for n in names]
    while len(list(tmp_path.glob("go.*.ready"))) < 2:  # both imported and waiting
        assert all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    rows = table(out / COHORT_CSV)
    assert sorted(rows) == sorted(names[0] + names[1])
    update_cohort_table(source)
    ref = table(source / COHORT_CSV)["a"]
    assert all({**r, "slide": "a"} == ref for r in rows.values())


def test_an_update_waits_for_one_in_progress_so_its_row_is_not_overwritten(
    blob_run, tmp_path, monkeypatch
):
    """The lost update a lock prevents: x's update lists the finished slides, y finishes, and
    y's update would write its table before x's (without y) replaced it."""
    import threading

    from hovernet.io import cohort_files

    out = tmp_path / "out"
    out.mkdir()
    for name in ("x", "y"):
        shutil.copy(blob_run / "a.csv", out / f"{name}.csv")
    shutil.copy(blob_run / "a.summary.json", out / "x.summary.json")
    listed, release = threading.Event(), threading.Event()
    make_row = cohort_files.slide_table_row

    def slow_row(folder, name, summary_path):
        if threading.current_thread() is x:  # x's update, between its listing and its write
            listed.set()
            release.wait(30)
        return make_row(folder, name, summary_path)

    monkeypatch.setattr(cohort_files, "slide_table_row", slow_row)
    x = threading.Thread(target=update_cohort_table, args=(out, ["x"]))
    x.start()
    assert listed.wait(30)  # x has listed the finished slides: only x
    shutil.copy(blob_run / "a.summary.json", out / "y.summary.json")  # y finishes
    y = threading.Thread(target=update_cohort_table, args=(out, ["y"]))
    y.start()
    y.join(1.0)
    assert y.is_alive()  # y waits for x's update to end
    release.set()
    x.join(30)
    y.join(30)
    assert list(table(out / COHORT_CSV)) == ["x", "y"]


def test_the_lock_makes_updates_take_turns(blob_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    go = tmp_path / "go"
    go.touch()
    with table_lock(out):
        proc = spawn(str(out), str(blob_run), str(go), "s1")
        while not (out / "s1.summary.json").exists():
            assert proc.poll() is None
            time.sleep(0.01)
        time.sleep(1.0)
        assert proc.poll() is None  # waiting for the lock
        assert not (out / COHORT_CSV).exists()  # waiting for the lock
    proc.communicate(timeout=60)
    assert proc.returncode == 0 and list(table(out / COHORT_CSV)) == ["s1"]


# ----------------------------------------------------------------------------------------------
# bad folders


def test_bad_folders_get_one_clear_error_and_no_table(blob_run, tmp_path):
    code, _, err = run_cli(["cohort", str(tmp_path / "missing")])
    assert code == 2 and "is not a folder" in err and err.count("\n") == 1
    code, _, err = run_cli(["cohort", str(tmp_path)])
    assert code == 2 and "no finished slide" in err and "hovernet infer wsi" in err
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    (out / COHORT_CSV).unlink()
    (out / "b.summary.json").write_text('{"nuclei": 3, "slide_m')  # cut short
    code, _, err = run_cli(["cohort", str(out)])
    assert code == 2 and err.count("\n") == 1, err
    assert "b.summary.json" in err and "--overwrite" in err
    (out / "b.summary.json").write_text("[1, 2]")
    code, _, err = run_cli(["cohort", str(out)])
    assert "b.summary.json is not a slide-mode summary" in err
    shutil.copy(blob_run / "b.summary.json", out / "b.summary.json")
    (out / "a.csv").unlink()
    code, _, err = run_cli(["cohort", str(out)])
    assert code == 2 and "a.csv is missing" in err and "--overwrite" in err
    lines = (blob_run / "a.csv").read_text().splitlines(keepends=True)
    (out / "a.csv").write_text("".join(lines[:-1]))  # a nucleus short of the summary
    code, _, err = run_cli(["cohort", str(out)])
    assert code == 2 and "a.csv does not match" in err and "the summary says" in err
    assert not (out / COHORT_CSV).exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half written


def test_a_slide_named_cohort_keeps_its_nuclei(blob_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    for suffix in (".csv", ".summary.json"):
        shutil.copy(blob_run / f"a{suffix}", out / f"cohort{suffix}")
    with pytest.raises(HoverNetError, match="slide named cohort.*rename"):
        update_cohort_table(out)
    assert (out / "cohort.csv").read_bytes() == (blob_run / "a.csv").read_bytes()


def test_a_bad_slide_in_the_folder_is_a_warning_for_slide_mode(blob_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(blob_run, out)
    (out / COHORT_CSV).unlink()  # b's row must be recomputed
    (out / "b.summary.json").write_text("{")
    lines: list[str] = []
    update_after_slide(out, "a", "done", lines.append)
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "b.summary.json" in lines[0]


# ----------------------------------------------------------------------------------------------
# the real model


@pytest.mark.slow
def test_demo_slide_row_matches_its_outputs(tmp_path):
    code, _, err = run_cli(["infer", "wsi", "--input_dir", str(DEMO), "--output_dir",
                            str(tmp_path), "--quiet"])  # fmt: skip
    assert code == 0, err
    name = DEMO.stem
    row = table(tmp_path / COHORT_CSV)[name]
    want = expected_row(tmp_path, name)
    assert want["nuclei_unclassified"] > 0  # the bundled model leaves some unclassified
    for key, value in want.items():
        got = number(row[key])
        assert got == (None if value is None else pytest.approx(value, rel=1e-9)), key
    summary = json.loads((tmp_path / f"{name}.summary.json").read_text())
    assert row["model"] == summary["model"] and row["precision"] == summary["run"]["precision"]
    total = sum(int(row[f"nuclei_{c}"]) for c in summary["nuclei_per_class"])
    assert total == int(row["nuclei"]) == summary["nuclei"]
    assert math.isclose(sum(float(row[f"fraction_{c}"]) for c in summary["nuclei_per_class"]), 1)


@pytest.mark.slow
def test_two_shard_processes_on_real_slides_write_both_rows(tmp_path):
    slides = str(DATA / "seed_format" / "slide_*.tif")
    command = [sys.executable, "-m", "hovernet", "infer", "wsi", "--quiet", "--input_dir", slides]
    procs = [
        subprocess.Popen(
            [*command, "--output_dir", str(tmp_path), "--shard", f"{i}/2"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    incremental = (tmp_path / COHORT_CSV).read_bytes()
    assert list(table(tmp_path / COHORT_CSV)) == ["slide_a", "slide_b"]
    assert update_cohort_table(tmp_path) == 2
    assert (tmp_path / COHORT_CSV).read_bytes() == incremental


if __name__ == "__main__":
    out_dir, source_dir, go_file, *slide_names = sys.argv[1:]
    worker(Path(out_dir), Path(source_dir), Path(go_file), slide_names)
