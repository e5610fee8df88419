"""`hovernet infer ... tile`: end to end on real CoNSeP images, and bad input.

Two kinds of network, since no trained weights exist here:
- the command line runs a real fast-mode HoVer-Net with seeded random weights saved in the
  original checkpoint format, on crops of at most 164 x 164 (one network window, ~5 s each);
  its nuclei are noise, so that run checks the plumbing: the raw map in the .mat is exactly the
  network's output, the outputs exist and parse, bad files are skipped and named;
- the records of the five outputs are cross-checked on a run of the library pipeline with
  `DarkBlobNet`, a cheap fully-convolutional stand-in with HoVer-Net's interface whose maps
  follow the dark (haematoxylin) blobs of the image, so that real nuclei-like objects appear.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import tifffile
import torch
import torch.nn.functional as F
from conftest import DATA, run_cli
from shapely.geometry import shape

from hovernet.config import GEOMETRY
from hovernet.errors import HoverNetError
from hovernet.infer.tile import TileConfig, run_tile
from hovernet.infer.tiling import TileGrid
from hovernet.io.inputs import list_inputs
from hovernet.io.slides import read_rgb
from hovernet.io.type_info import check_type_info, load_type_info

CONSEP = DATA / "consep_patches" / "images"
TYPE_INFO = DATA / "seed_format" / "type_info.json"  # ids 0..2, as the seed's --nr_types=3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from hovernet.model.network import HoVerNet

    torch.manual_seed(0)
    model = HoVerNet("fast", nr_types=3).eval()
    with torch.no_grad():
        model.decoder["np"].u0.conv.bias[1] += 1.0  # favour "nucleus" so that nuclei appear
    path = tmp_path_factory.mktemp("model") / "net_epoch=1.tar"
    torch.save({"desc": model.state_dict()}, path)  # the original's format
    return path


@pytest.fixture(scope="module")
def tile_run(tmp_path_factory, checkpoint):
    """One CLI run over a PNG, a TIFF and a broken file, into a folder with an older output."""
    root = tmp_path_factory.mktemp("tile")
    inputs, out = root / "in", root / "out"
    inputs.mkdir()
    images = {
        "a": read_rgb(CONSEP / "test_10_000.png")[:164, :150],
        "b": read_rgb(CONSEP / "test_10_001.png")[40:160, 100:230],
    }
    cv2.imwrite(str(inputs / "a.png"), cv2.cvtColor(images["a"], cv2.COLOR_RGB2BGR))
    tifffile.imwrite(inputs / "b.tif", images["b"])
    (inputs / "broken.png").write_bytes(b"this is not a PNG")
    (inputs / "notes.txt").write_text("not an image; ignored")
    (out / "json").mkdir(parents=True)
    (out / "json" / "older.json").write_text('{"kept": true}')
    code, stdout, stderr = run_cli(
        [
            "infer",
            "--nr_types=3",
            f"--type_info_path={TYPE_INFO}",
            "--batch_size=8",
            "--model_mode=fast",
            f"--model_path={checkpoint}",
            "--nr_post_proc_workers=1",
            "--precision=fp32",  # the raw map is compared with the fp32 network below
            "tile",
            f"--input_dir={inputs}",
            f"--output_dir={out}",
            "--draw_dot",
            "--save_raw_map",
        ]
    )
    return {"code": code, "out": stdout, "err": stderr, "dir": out, "images": images}


def test_broken_input_is_named_skipped_and_fails_the_run(tile_run):
    assert tile_run["code"] == 2
    assert "broken.png" in tile_run["err"] and "failed" in tile_run["err"]
    log = tile_run["out"] + tile_run["err"]  # per-image lines go with the progress (stderr)
    assert "skipped" in log and "broken.png" in log
    assert "a: " in log and "b: " in log
    assert not list(tile_run["dir"].rglob("broken.*"))
    assert not list(tile_run["dir"].rglob("notes.*"))


def test_existing_outputs_are_kept_and_no_temporary_files_remain(tile_run):
    assert json.loads((tile_run["dir"] / "json" / "older.json").read_text()) == {"kept": True}
    assert not [p for p in tile_run["dir"].rglob(".*")]


def check_outputs(out: Path, name: str, image: np.ndarray, info: dict) -> int:
    """All five outputs of `name` parse and describe the same nuclei; returns their number."""
    nuc = json.loads((out / "json" / f"{name}.json").read_text())["nuc"]
    ids = sorted(int(i) for i in nuc)
    assert ids == list(range(1, len(ids) + 1))

    mat = scipy.io.loadmat(out / "mat" / f"{name}.mat")
    inst_map = mat["inst_map"]
    assert inst_map.shape == image.shape[:2]
    assert sorted(set(np.unique(inst_map).tolist()) - {0}) == ids
    assert mat["inst_uid"].ravel().tolist() == [int(i) for i in nuc]
    if ids:
        assert mat["inst_type"].ravel().tolist() == [nuc[i]["type"] for i in nuc]
        np.testing.assert_allclose(mat["inst_centroid"], [nuc[i]["centroid"] for i in nuc])

    features = json.loads((out / "qupath" / f"{name}.geojson").read_text())["features"]
    assert [f["properties"]["measurements"]["Nucleus ID"] for f in features] == ids
    for feature in features:
        nid = str(feature["properties"]["measurements"]["Nucleus ID"])
        poly = shape(feature["geometry"])
        assert poly.geom_type == "Polygon" and poly.is_valid and poly.exterior.is_ccw
        assert feature["properties"]["objectType"] == "detection"
        type_name, colour = info[nuc[nid]["type"]]
        assert feature["properties"]["classification"] == {"name": type_name, "color": [*colour]}
        # the polygon covers the nucleus' pixels (contour through pixel centres)
        assert poly.area == pytest.approx((inst_map == int(nid)).sum(), rel=0.6, abs=4)

    with open(out / "csv" / f"{name}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == ids
    areas = np.bincount(inst_map.ravel())
    for row in rows:
        rec = nuc[row["id"]]
        assert int(row["type"]) == rec["type"] and row["type_name"] == info[rec["type"]][0]
        assert float(row["area"]) == areas[int(row["id"])]
        assert float(row["centroid_x"]) == pytest.approx(rec["centroid"][0])

    overlay = cv2.imread(str(out / "overlay" / f"{name}.png"))
    assert overlay.shape == image.shape
    changed = np.any(cv2.cvtColor(overlay, cv2.COLOR_BGR2RGB) != image, axis=-1)
    if ids:
        assert changed.any()
    else:  # only the legend (every class with its count, 0 here) in the top left corner
        assert changed[:60, :130].any() and not changed[60:].any() and not changed[:, 130:].any()
    return len(ids)


@pytest.mark.parametrize("name", ["a", "b"])
def test_cli_outputs_exist_and_parse(tile_run, name):
    info = load_type_info(TYPE_INFO, 3)
    check_outputs(tile_run["dir"], name, tile_run["images"][name], info)
    assert scipy.io.loadmat(tile_run["dir"] / "mat" / f"{name}.mat")["raw_map"].shape == (
        *tile_run["images"][name].shape[:2],
        4,
    )


class DarkBlobNet(torch.nn.Module):
    """A stand-in with HoVer-Net's interface and fast-mode geometry, computed locally.

    Nucleus logit from the Gaussian-blurred darkness of the image, h/v maps as minus its x/y
    derivatives (increasing across a blob, like HoVer-Net's distance maps), and 3 type logits
    from the local redness.
    """

    def __init__(self, threshold: float = 0.35, sigma: float = 2.0):
        super().__init__()
        self.geometry, self.nr_types = GEOMETRY["fast"], 3
        self.radius = int(3 * sigma)
        t = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        g = torch.exp(-(t**2) / (2 * sigma**2))
        self.kernel = g / g.sum()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        k = len(self.kernel)
        dark = 1 - x.mean(1, keepdim=True) / 255
        blur = F.conv2d(F.conv2d(dark, self.kernel.view(1, 1, 1, k)), self.kernel.view(1, 1, k, 1))
        dx = blur[..., 1:-1, 2:] - blur[..., 1:-1, :-2]
        dy = blur[..., 2:, 1:-1] - blur[..., :-2, 1:-1]
        core = blur[..., 1:-1, 1:-1]
        red = F.avg_pool2d(x[:, :1] / 255, k + 2, stride=1)
        c = self.geometry.margin - self.radius - 1

        def crop(t: torch.Tensor) -> torch.Tensor:
            return t[..., c : t.shape[-2] - c, c : t.shape[-1] - c]

        zero = torch.zeros_like(core)
        return {
            "np": crop(torch.cat([zero, (core - self.threshold) * 30], 1)),
            "hv": crop(torch.cat([-dx, -dy], 1)),
            "tp": crop(torch.cat([zero, (red - 0.6) * 10, (0.6 - red) * 10], 1)),
        }


@pytest.fixture(scope="module")
def standin_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("standin")
    files = (CONSEP / "test_10_000.png", CONSEP / "test_10_001.png")
    info = load_type_info(TYPE_INFO, 3)
    config = TileConfig(files, out, batch_size=3, type_info=info, draw_dot=True)
    summary = run_tile(DarkBlobNet(), config, log=lambda line: None)
    return summary, out, files, info


@pytest.mark.parametrize("index", [0, 1])
def test_five_outputs_parse_and_agree(standin_run, index):
    summary, out, files, info = standin_run
    assert not summary.failed and summary.n_patches == 8  # 256 x 256: 2 x 2 windows of 164
    name = files[index].stem
    n = check_outputs(out, name, read_rgb(files[index]), info)
    assert n == summary.done[name] > 5


def test_raw_map_is_the_network_output_and_gives_the_nuclei(tile_run, checkpoint):
    from hovernet.infer.postprocess import postprocess
    from hovernet.model.checkpoints import load_model

    image = tile_run["images"]["b"]
    mat = scipy.io.loadmat(tile_run["dir"] / "mat" / "b.mat")
    raw = mat["raw_map"]
    # the same window straight through the unmodified network (no BN folding, no tiling code)
    grid = TileGrid(image.shape[:2], 256, 164)
    window = grid.pad(image)[:256, :256]
    model = load_model(checkpoint)
    with torch.no_grad():
        out = model(torch.from_numpy(window).permute(2, 0, 1)[None].float())
    height, width = image.shape[:2]
    prob = torch.softmax(out["np"], 1)[0, 1, :height, :width].numpy()
    hv = out["hv"][0, :, :height, :width].permute(1, 2, 0).numpy()
    types = out["tp"][0, :, :height, :width].argmax(0).numpy()
    np.testing.assert_allclose(raw[..., 1], prob, atol=1e-4)
    np.testing.assert_allclose(raw[..., 2:], hv, atol=1e-4 * np.abs(hv).max())
    assert (raw[..., 0] == types).mean() > 0.99  # BN folding may flip exact ties only

    inst_map, _ = postprocess(raw, nr_types=3)
    np.testing.assert_array_equal(inst_map, mat["inst_map"])


def test_seed_command_line_parses_and_names_a_missing_input(tmp_path):
    code, _, err = run_cli(
        [
            "infer",
            "--nr_types=3",
            "--type_info_path=type_info.json",
            "--batch_size=8",
            "--model_mode=original",
            "--model_path=net_epoch=33.tar",
            "tile",
            f"--input_dir={tmp_path / 'nowhere'}",
            f"--output_dir={tmp_path / 'out'}",
            "--draw_dot",
        ]
    )
    assert code == 2
    assert f"input {tmp_path / 'nowhere'} does not exist" in err
    assert not (tmp_path / "out").exists()


def _one_image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.png"), np.zeros((8, 8, 3), np.uint8))
    return folder


def test_missing_model_file_is_named(tmp_path):
    code, _, err = run_cli(
        [
            "infer",
            f"--model-path={tmp_path / 'missing.tar'}",
            "tile",
            f"--input-dir={_one_image_dir(tmp_path)}",
            f"--output-dir={tmp_path / 'out'}",
        ]
    )
    assert code == 2 and "missing.tar does not exist" in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_no_model_given_uses_the_bundled_model_and_says_so(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = cv2.imread(str(DATA / "monuseg" / "images" / "TCGA-21-5784-01Z-00-DX1.png"))[:300, :300]
    cv2.imwrite(str(folder / "crop.png"), rgb)
    out = tmp_path / "o"
    code, _, err = run_cli(
        ["infer", "--device=cpu", "tile", f"--input-dir={folder}", f"--output-dir={out}"]
    )
    assert code == 0, err
    from hovernet.model.bundled import BUNDLED_NAME

    assert err.count(f"using the bundled CPU model {BUNDLED_NAME}") == 1
    assert f"model {BUNDLED_NAME} (bundled): lite mode, 4 nucleus types" in err
    csv_rows = (out / "csv" / "crop.csv").read_text().splitlines()
    assert len(csv_rows) > 10  # a real model finds nuclei in a MoNuSeg crop
    assert "prob_inflammatory" in csv_rows[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"0": ["bg", [0, 0, 0]], "1": ["a", [1, 2, 3]]}', "missing ids [2]"),
        (
            '{"1": ["a", [1, 2, 3]], "2": ["b", [1, 2, 3]], "3": ["c", [1, 2, 3]]}',
            "ids [3] out of range",
        ),
        ('{"1": ["a", [1, 2, 3]], "2": ["b"', "not valid JSON"),
        ('{"1": ["a", [1, 2, 300]], "2": ["b", [1, 2, 3]]}', "[name, [r, g, b]]"),
        ('[["a", [1, 2, 3]]]', "expected a JSON object"),
    ],
)
def test_bad_type_info_is_an_error_naming_the_file(tmp_path, checkpoint, content, message):
    path = tmp_path / "type_info.json"
    path.write_text(content)
    code, _, err = run_cli(
        [
            "infer",
            f"--model_path={checkpoint}",
            f"--type_info_path={path}",
            "tile",
            f"--input_dir={_one_image_dir(tmp_path)}",
            f"--output_dir={tmp_path / 'out'}",
        ]
    )
    assert code == 2 and str(path) in err and message in err
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "flag, message", [("--model_mode=original", "use --model_mode fast"), ("--nr_types=5", "3")]
)
def test_flag_conflicting_with_checkpoint_is_an_error(tmp_path, checkpoint, flag, message):
    code, _, err = run_cli(
        [
            "infer",
            f"--model_path={checkpoint}",
            flag,
            "tile",
            f"--input_dir={_one_image_dir(tmp_path)}",
            f"--output_dir={tmp_path / 'out'}",
        ]
    )
    assert code == 2 and str(checkpoint) in err and message in err


def test_list_inputs(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.TIF").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"")
    (tmp_path / ".hidden.png").write_bytes(b"")
    other = tmp_path / "other"
    other.mkdir()
    (other / "z.jpg").write_bytes(b"")
    assert list_inputs([tmp_path, other / "z.jpg"]) == [
        tmp_path / "a.TIF",
        tmp_path / "b.png",
        other / "z.jpg",
    ]
    (other / "a.png").write_bytes(b"")
    with pytest.raises(HoverNetError, match="both write outputs named 'a'"):
        list_inputs([tmp_path, other])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HoverNetError, match="no images in"):
        list_inputs([empty])


def test_type_info_for_untyped_model_is_refused():
    with pytest.raises(HoverNetError, match="no type branch"):
        check_type_info({1: ("a", (1, 2, 3))}, None, "x.json")
