"""Issue 8: progress, unwritable outputs, reruns and interrupts, clean failures, help text.

The interrupt test runs the real command line in a subprocess and sends it SIGINT / SIGTERM.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from conftest import DATA
from test_infer import CONSEP, TYPE_INFO, DarkBlobNet

from hovernet.cli import main
from hovernet.errors import HoverNetError
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.infer.tile_worker import OUTPUT_KINDS, output_paths
from hovernet.io.slides import read_rgb
from hovernet.io.type_info import load_type_info

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], columns: int | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = os.environ.get("COLUMNS")
    if columns:
        os.environ["COLUMNS"] = str(columns)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if columns:
            if old is None:
                os.environ.pop("COLUMNS", None)
            else:
                os.environ["COLUMNS"] = old
    return code, out.getvalue(), err.getvalue()


def _tiles(folder: Path, n: int, size: int = 120) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image = read_rgb(CONSEP / "test_10_000.png")
    paths = []
    for i in range(n):
        path = folder / f"t{i}.png"
        crop = image[i * 20 : i * 20 + size, i * 10 : i * 10 + size]
        cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


# ------------------------------------------------------------------ 1, 3: progress and reruns
def test_tile_lines_per_image_skip_done_and_overwrite(tmp_path):
    files = _tiles(tmp_path / "in", 3)
    out = tmp_path / "out"
    info = load_type_info(TYPE_INFO, 3)
    lines: list[str] = []
    warned: list[str] = []

    def log(line: str) -> None:
        (warned if line.startswith("warning:") else lines).append(line)

    config = TileConfig(tuple(files), out, batch_size=4, type_info=info, post_proc_workers=0)
    summary = run_tile(DarkBlobNet(), config, log=log)
    assert sorted(summary.done) == ["t0", "t1", "t2"]
    assert [line.split(":")[0] for line in lines] == ["[1/3] t0", "[2/3] t1", "[3/3] t2"]
    # the stand-in records no resolution: the ring features cannot be measured, and it says so
    assert len(warned) == 1 and "ring features" in warned[0] and "--input_mpp" in warned[0]
    # an image with only some of its outputs is not done; the others are skipped
    output_paths(out, "t1")["csv"].unlink()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("t0.*")}
    lines.clear()
    summary = run_tile(DarkBlobNet(), config, log=log)
    assert sorted(summary.skipped) == ["t0", "t2"] and list(summary.done) == ["t1"]
    assert "2 of 3 images already done" in lines[0] and "--overwrite" in lines[0]
    assert all(output_paths(out, "t1")[k].is_file() for k in OUTPUT_KINDS)
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("t0.*")}
    from dataclasses import replace

    summary = run_tile(DarkBlobNet(), replace(config, overwrite=True), log=log)
    assert sorted(summary.done) == ["t0", "t1", "t2"] and not summary.skipped
    assert stamps != {p: p.stat().st_mtime_ns for p in out.rglob("t0.*")}


# ------------------------------------------------------------------ 2: unwritable outputs
def test_tile_output_under_a_file_is_one_error_before_any_work(tmp_path):
    files = _tiles(tmp_path / "in", 1)
    (tmp_path / "file").write_text("x")
    config = TileConfig(tuple(files), tmp_path / "file" / "out", post_proc_workers=0)
    with pytest.raises(HoverNetError, match=r"cannot write to the output folder .*file/out"):
        run_tile(DarkBlobNet(), config, log=lambda line: None)


def test_tile_read_only_output_folder_is_one_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the path-under-a-file case covers it")
    files = _tiles(tmp_path / "in", 1)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(HoverNetError, match="cannot write to the output folder"):
            run_tile(DarkBlobNet(), TileConfig(tuple(files), out), log=lambda line: None)
    finally:
        out.chmod(0o755)


def _label_dirs(tmp_path: Path) -> tuple[Path, Path]:
    pred, true = tmp_path / "pred", tmp_path / "true"
    for folder in (pred, true):
        folder.mkdir()
        inst = np.zeros((40, 40), np.int32)
        inst[5:15, 5:15] = 1
        np.save(folder / "img.npy", inst)
    return pred, true


@pytest.mark.parametrize("command", ["stats", "extract-patches", "view-dataset"])
def test_commands_name_an_unwritable_output_in_one_line(tmp_path, command):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    pred, true = _label_dirs(tmp_path)
    args = {
        "stats": ["stats", "--pred-dir", str(pred), "--true-dir", str(true), "--out",
                  str(blocker / "r.json")],
        "extract-patches": ["extract-patches", "--images", str(DATA / "seed_format"),
                            "--annotations", str(DATA / "seed_format"), "--out",
                            str(blocker / "ds")],
        "view-dataset": ["view-dataset", str(tmp_path), "--out", str(blocker / "g.png")],
    }[command]  # fmt: skip
    code, out, err = run_cli(args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write to the"), err
    assert str(blocker) in lines[0] and "Traceback" not in err
    assert out == ""


# ------------------------------------------------------------------ 3: interrupt, real signal
def _wait_for(predicate, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out: {proc.communicate()}")


@pytest.mark.slow
def test_sigint_and_sigterm_stop_cleanly_and_reruns_continue(tmp_path):
    from hovernet.model.network import HoVerNet

    torch.manual_seed(0)
    model = HoVerNet("fast", nr_types=3).eval()
    ckpt = tmp_path / "net.tar"
    torch.save({"desc": model.state_dict()}, ckpt)
    files = _tiles(tmp_path / "in", 10, size=160)
    out = tmp_path / "out"
    # batch 1: with the default batch of 8 the first 8 tiles finish together, and on a quiet
    # machine the signal can land only after the last batch, when every image is done
    cmd = [sys.executable, "-m", "hovernet", "infer", f"--model_path={ckpt}",
           f"--type_info_path={TYPE_INFO}", "--nr_post_proc_workers=1", "--threads=1",
           "--batch_size=1",
           "tile", f"--input_dir={tmp_path / 'in'}", f"--output_dir={out}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def done() -> list[str]:
        return sorted(
            p.stem for p in files if all(q.is_file() for q in output_paths(out, p.stem).values())
        )

    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        before = len(done())
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        _wait_for(lambda n=before: len(done()) > n, proc, 300)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr
        last = [line for line in stderr.splitlines() if line.strip()][-1]
        assert last.startswith("interrupted (") and "images finished in" in last, stderr
        assert "rerun the same command" in last and "Traceback" not in stderr
        assert not list(out.rglob(".*")), "temporary files left"
        assert before < len(done()) < len(files)
        if sig == signal.SIGTERM:
            assert "already done" in stderr  # the rerun skipped the images of the first run
    finished = done()
    stamps = {p: p.stat().st_mtime_ns for n in finished for p in output_paths(out, n).values()}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert done() == sorted(p.stem for p in files)
    assert f"{len(finished)} of 10 images already done" in result.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


# ------------------------------------------------------------------ 5: 0 nuclei, same outputs
def test_typed_mat_without_nuclei_has_inst_type_and_stats_accepts_it(tmp_path):
    blank = tmp_path / "in"
    blank.mkdir()
    cv2.imwrite(str(blank / "blank.png"), np.full((100, 100, 3), 255, np.uint8))
    out = tmp_path / "out"
    info = load_type_info(TYPE_INFO, 3)
    config = TileConfig((blank,), out, type_info=info, post_proc_workers=0)
    summary = run_tile(DarkBlobNet(), config, log=lambda line: None)
    assert summary.done == {"blank": 0}
    mat = scipy.io.loadmat(out / "mat" / "blank.mat")
    assert mat["inst_type"].size == 0
    header = (out / "csv" / "blank.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("prob_")] == [
        "prob_unclassified", "prob_other nuclei", "prob_inflammatory"
    ]  # fmt: skip
    code, _, err = run_cli(
        ["stats", "--mode", "type", "--pred-dir", str(out / "mat"), "--true-dir",
         str(out / "mat")]
    )  # fmt: skip
    assert code == 0, err


# ------------------------------------------------------------------ 6: failed extract run
def test_failed_extraction_leaves_nothing_and_the_suggested_rerun_works(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "s.png"), np.full((80, 100, 3), (200, 170, 210), np.uint8))
    mask = np.zeros((80, 100, 3), np.uint8)
    mask[5:20, 5:20] = (252, 255, 3)  # "other nuclei" (255, 255, 0) after lossy compression
    cv2.imwrite(str(folder / "s_mask.png"), mask[:, :, ::-1])
    out = tmp_path / "ds"
    base = ["extract-patches", "--images", str(folder), "--annotations", str(folder),
            "--type-info", str(TYPE_INFO), "--out", str(out), "--valid-fraction", "0"]  # fmt: skip
    code, _, err = run_cli(base)
    assert code == 2 and "not in type_info" in err
    assert not out.exists()
    code, _, err = run_cli([*base, "--colour-tolerance", "5"])
    assert code == 0, err
    assert (out / "manifest.csv").is_file()
    # a finished folder with other settings names --overwrite
    code, _, err = run_cli([*base, "--colour-tolerance", "6"])
    assert code == 2 and "--overwrite" in err
    assert run_cli([*base, "--colour-tolerance", "6", "--overwrite"])[0] == 0


# ------------------------------------------------------------------ 7: notes and noise
def test_grey_rgba_notes_and_corrupt_png_is_one_clean_line(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    grey = cv2.cvtColor(read_rgb(CONSEP / "test_10_000.png")[:80, :80], cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(folder / "grey.png"), grey)
    rgba = np.dstack(
        [np.full((80, 80, 3), (120, 40, 90), np.uint8), np.full((80, 80), 100, np.uint8)]
    )
    cv2.imwrite(str(folder / "clear.png"), rgba)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    script = (
        "import warnings, sys\n"
        "from hovernet.cli import run\n"
        "from hovernet.io.slides import read_rgb\n"
        "from hovernet.errors import HoverNetError\n"
        "import hovernet.cli as c\n"
        "warnings.formatwarning = c._format_warning\n"
        f"for name in ('grey', 'clear', 'broken'):\n"
        f"    try:\n"
        f"        img = read_rgb(r'{folder}/' + name + '.png')\n"
        f"        print(name, img.shape, img[0, 0].tolist())\n"
        f"    except HoverNetError as exc:\n"
        f"        print('error:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "libpng" not in result.stderr
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")
    assert "clear.png: RGBA image with transparent pixels, composited on white" in warnings[0]
    # BGR (120, 40, 90) is RGB (90, 40, 120): 90 * 100/255 + 255 * 155/255 = 190, ...
    assert "clear (80, 80, 3) [190, 171, 202]" in result.stdout
    assert "grey.png: greyscale image" in result.stdout  # refused, not converted
    assert result.stdout.count("broken.png") == 1


def test_usage_error_is_one_error_line_with_the_usage():
    code, out, err = run_cli(["stats", "--bogus"])
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith("error: No such option: --bogus")
    assert lines[1].startswith("usage: hovernet stats [OPTIONS]")


def test_wsi_option_of_the_original_names_its_mode():
    code, _, err = run_cli(["infer", "tile", "--input_dir", "x", "--output_dir", "y",
                            "--proc_mag", "40"])  # fmt: skip
    assert code == 2
    assert "--proc_mag belongs to the original's wsi mode" in err.splitlines()[0]


# ------------------------------------------------------------------ 8: help at 80 columns
@pytest.mark.parametrize(
    "command",
    [["extract-patches"], ["infer"], ["infer", "tile"], ["stats"], ["view-dataset"],
     ["convert-checkpoint"]],
)  # fmt: skip
def test_help_fits_80_columns_with_one_name_and_help_per_option(command):
    code, out, _ = run_cli([*command, "--help"], columns=80)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and "<bool>" not in out
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert options and all("," not in name for name in options)
    # every option line has help text after its name (and metavar)
    for line in out.splitlines():
        if line.startswith("  --"):
            parts = line.split()
            rest = parts[1:] if len(parts) < 2 or not parts[1].startswith("<") else parts[2:]
            assert rest, line


def test_help_marks_required_and_aliases_still_work(tmp_path):
    _, out, _ = run_cli(["extract-patches", "--help"], columns=80)
    assert "--annotations" in out and "[required]" in out and "--ann-dir" not in out
    pred, true = _label_dirs(tmp_path)
    for spelling in ("--pred_dir", "--pred-dir"):
        code, _, err = run_cli(["stats", spelling, str(pred), "--true_dir", str(true)])
        assert code == 0, err
