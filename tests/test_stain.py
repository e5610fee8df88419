"""Stain shifts and Reinhard normalisation (hovernet/data/stain.py) and `--stain_norm`."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.color import rgb2lab

from hovernet.data import stain
from tests.conftest import DATA, run_cli

CROP = DATA / "consep_patches/images/test_1_000.png"
REF = DATA / "consep_train_patches/images/train_1_010.jpg"


def _rgb(path: Path) -> np.ndarray:
    return np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return _rgb(CROP)


@pytest.fixture(scope="module")
def ref() -> np.ndarray:
    return _rgb(REF)


def test_shifts_are_seeded_and_reproducible(crop):
    for name in stain.SHIFTS:
        if name == "none":
            continue
        a, b = stain.shift_image(crop, name, seed=3), stain.shift_image(crop, name, seed=3)
        assert np.array_equal(a, b)
        assert not np.array_equal(a, stain.shift_image(crop, name, seed=4))  # the jitter
        assert np.abs(a.astype(int) - crop).mean() > 3  # a visible change
    assert not np.array_equal(stain.shift_image(crop, "pale_h"), stain.shift_image(crop, "faded"))
    with pytest.raises(ValueError, match="unknown stain shift"):
        stain.shift_image(crop, "purple")


def test_a_shifts_draw_does_not_depend_on_the_other_shifts(monkeypatch):
    """The measured tables stay reproducible when shifts are added to SHIFTS."""
    before = stain.shift_params("strong_e", 5)
    assert np.all(np.abs(before[0] - (1.0, 1.6, 1.0)) <= 0.05)
    monkeypatch.setitem(stain.SHIFTS, "a_new_one", stain.HedShift((2.0, 1.0, 1.0), jitter=0.1))
    after = stain.shift_params("strong_e", 5)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_identity_shift_gives_the_image_back(crop):
    assert np.array_equal(stain.shift_image(crop, "none", seed=7), crop)
    back = stain.hed_shift(crop, (1.0, 1.0, 1.0))
    assert np.abs(back.astype(int) - crop).max() <= 1  # rounding (and pixel 0 -> 1)


def test_hed_shift_scales_the_stain_amounts(crop):
    shifted = stain.hed_shift(crop, (0.5, 1.5, 1.0), (0.02, 0.0, 0.0))
    before, after = stain.to_amounts(crop), stain.to_amounts(shifted)
    ok = (shifted > 2).all(-1) & (shifted < 253).all(-1) & (crop > 2).all(-1)  # not clipped
    assert ok.mean() > 0.5
    np.testing.assert_allclose(after[ok, 0], before[ok, 0] * 0.5 + 0.02, atol=0.02)
    np.testing.assert_allclose(after[ok, 1], before[ok, 1] * 1.5, atol=0.03)
    # haematoxylin is the first stain vector: a purely H image is blue-purple (R, G < B)
    h_only = stain.from_amounts(np.full((1, 1, 3), [1.0, 0.0, 0.0]))[0, 0]
    assert h_only[2] > h_only[0] and h_only[2] > h_only[1]


def test_lab_matches_a_direct_computation(crop):
    # OpenCV's float conversion: within 0.3 of scikit-image's exact formula
    np.testing.assert_allclose(stain.to_lab(crop), rgb2lab(crop), atol=0.3)


def test_reinhard_maps_lab_mean_and_std_to_the_reference(crop, ref):
    params = stain.reinhard_fit(ref)
    pixels = rgb2lab(ref).reshape(-1, 3)
    tissue = pixels[pixels[:, 0] < 90]
    np.testing.assert_allclose(params[0], tissue.mean(0), atol=0.2)
    np.testing.assert_allclose(params[1], tissue.std(0), atol=0.2)
    shifted = stain.shift_image(crop, "strong_e", seed=1)
    lab = stain.reinhard_lab(shifted, params).reshape(-1, 3).astype(np.float64)
    own = stain.to_lab(shifted).reshape(-1, 3)[:, 0] < 90  # the image's own tissue pixels
    np.testing.assert_allclose(lab[own].mean(0), params[0], atol=1e-3)
    np.testing.assert_allclose(lab[own].std(0), params[1], rtol=1e-4)
    rgb = stain.reinhard_apply(shifted, params)  # back in RGB (gamut, tissue mask): closer
    far = np.abs(stain.lab_stats(shifted) - params).max()
    assert np.abs(stain.lab_stats(rgb) - params).max() < far / 2


def test_normalising_the_reference_to_itself_is_near_identity(ref):
    out = stain.reinhard_apply(ref, stain.reinhard_fit(ref))
    diff = np.abs(out.astype(int) - ref)
    assert diff.mean() < 0.5 and diff.max() <= 2


def test_the_network_sees_the_normalised_image(crop):
    from hovernet.infer.loading import LoadOptions, load_for_inference
    from hovernet.infer.predict import predict_stream

    model, _ = load_for_inference(LoadOptions(model_path=None, device="cpu", precision="fp32"))
    seen = []
    norm = partial(
        stain.reinhard_apply,
        params=stain.reinhard_fit(np.ascontiguousarray(crop[::-1, ::-1, ::-1])),
    )
    model.stain_norm = lambda image: seen.append(image) or norm(image)
    ((_, given, maps),) = predict_stream(model, [("a", crop)], precision="fp32")
    assert len(seen) == 1 and given is crop  # outputs keep the image as given
    model.stain_norm = None
    ((_, _, direct),) = predict_stream(model, [("a", norm(crop))], precision="fp32")
    ((_, _, plain),) = predict_stream(model, [("a", crop)], precision="fp32")
    np.testing.assert_array_equal(maps.pred_map, direct.pred_map)
    assert not np.array_equal(maps.pred_map, plain.pred_map)


def _nuclei(out: Path, name: str) -> int:
    return len(json.loads((out / "json" / f"{name}.json").read_text())["nuc"])


def test_cli_stain_norm_brings_a_faded_tile_back(crop, tmp_path):
    """A strongly faded tile loses nuclei; normalised to the unfaded tile, most come back."""
    for name, image in (("orig", crop), ("faded", stain.hed_shift(crop, (0.3, 0.3, 1.0)))):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "tile.png"), image[:, :, ::-1])
    counts = {}
    for run, folder, extra in (
        ("orig", "orig", []),
        ("faded", "faded", []),
        ("norm", "faded", ["--stain_norm", str(tmp_path / "orig/tile.png")]),
    ):
        code, _, err = run_cli(
            ["infer", "--device", "cpu", *extra, "tile", "--input_dir", str(tmp_path / folder),
             "--input_mpp", "0.25", "--output_dir", str(tmp_path / f"out_{run}"), "--quiet"]
        )  # fmt: skip
        assert code == 0, err
        counts[run] = _nuclei(tmp_path / f"out_{run}", "tile")
    assert counts["faded"] < 0.8 * counts["orig"]
    assert abs(counts["norm"] - counts["orig"]) < abs(counts["faded"] - counts["orig"]) / 2
    # the folder records the normalisation: adding to it without --stain_norm is refused
    code, _, err = run_cli(
        ["infer", "--device", "cpu", "tile", "--input_dir", str(tmp_path / "faded"),
         "--input_mpp", "0.25", "--output_dir", str(tmp_path / "out_norm"), "--quiet"]
    )  # fmt: skip
    assert code == 2 and "stain_norm: 'reinhard LAB mean" in err and "-> None" in err


@pytest.mark.parametrize("kind", ["missing", "not_an_image"])
def test_bad_reference_is_one_clear_error(crop, tmp_path, kind):
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in/tile.png"), crop[:, :, ::-1])
    bad = tmp_path / "ref.png"
    if kind == "not_an_image":
        bad.write_text("not a PNG")
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["infer", "--device", "cpu", "--stain_norm", str(bad), "tile", "--input_dir",
         str(tmp_path / "in"), "--output_dir", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--stain_norm" in errors[0] and str(bad) in errors[0]
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


@pytest.mark.slow
def test_slide_mode_normalises_the_regions_and_records_it(tmp_path, ref):
    """The bundled slide with --stain_norm: other nuclei than without, and the run says so."""
    slide = Path(__file__).resolve().parents[1] / "hovernet/samples/CMU-1-Small-Region.svs"
    cv2.imwrite(str(tmp_path / "ref.png"), ref[:, :, ::-1])
    runs = {}
    for run, extra in (("plain", []), ("norm", ["--stain_norm", str(tmp_path / "ref.png")])):
        code, _, err = run_cli(
            ["infer", "--device", "cpu", *extra, "wsi", "--input_dir", str(slide),
             "--output_dir", str(tmp_path / run)]
        )  # fmt: skip
        assert code == 0, err
        runs[run] = json.loads((tmp_path / run / f"{slide.stem}.summary.json").read_text())
    assert runs["plain"]["run"]["stain_norm"] is None
    assert runs["norm"]["run"]["stain_norm"].startswith("reinhard LAB mean ")
    assert runs["norm"]["nuclei_per_class"] != runs["plain"]["nuclei_per_class"]
