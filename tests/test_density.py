"""Per-class density maps: `hovernet.metrics.density` (nuclei per mm^2 of tissue on a micron
grid), their files (`hovernet.io.density_files`) and slide mode's `<slide>.density.tif/.png`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from support.slide_helpers import ArraySlide, dark_tissue, disk_image
from support.view_helpers import CROP, slide_output

from hovernet.errors import HoverNetError
from hovernet.grids import Grid
from hovernet.infer.hv_calibration import calibration_windows
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.infer.tissue import tissue_area_mm2
from hovernet.io.density_files import read_density_tiff, write_density_tiff
from hovernet.io.slide_exports import output_paths
from hovernet.metrics.density import DensityGrid, cell_tissue_mm2, density_maps
from hovernet.model.standin import BlobNet

# a slide at 0.5 um/px: 100 um cells are 200 px; its mask at 2 um/px: 50 mask px per cell
SLIDE_MPP, MASK_MPP = 0.5, 2.0
GRID = DensityGrid((600, 200), SLIDE_MPP, 100)


def _at(cell_col: int, n: int, row: int = 0) -> np.ndarray:
    """n centroids (level-0 px) inside cell (row, cell_col) of the 200-px grid."""
    rng = np.random.default_rng(cell_col + 10 * row)
    return rng.uniform(5, 195, (n, 2)) + [200 * cell_col, 200 * row]


def test_hand_computed_densities_full_half_and_too_little_tissue():
    mask = np.zeros((50, 150), bool)  # a 300 x 100 um slide: three cells in a row
    mask[:, :50] = True  # cell 0: all tissue, 0.01 mm^2
    mask[:, 50:75] = True  # cell 1: half tissue, 0.005 mm^2
    mask[:2, 100:] = True  # cell 2: 4 % tissue, under the 10 % minimum
    xy = np.concatenate([_at(0, 10), _at(1, 10), _at(2, 7), _at(0, 3)])
    types = np.array([2] * 27 + [0, 0, -1])  # two unclassified, one untyped, in cell 0
    grid = DensityGrid((600, 200), SLIDE_MPP, 100)
    bands, geo = density_maps(xy, types, 4, mask, MASK_MPP, grid)
    assert bands.dtype == np.float32 and bands.shape == (6, 1, 3)
    assert geo["bands"] == ["type 0", "type 1", "type 2", "type 3", "total", "tissue_mm2"]
    assert geo["cell_px"] == 200 and geo["grid_shape"] == [1, 3] and geo["origin_px"] == [0, 0]
    type2, total, tissue = bands[2, 0], bands[4, 0], bands[5, 0]
    assert type2[0] == pytest.approx(1000)  # 10 nuclei / 0.01 mm^2
    assert type2[1] == pytest.approx(2000)  # half the tissue: twice the density
    assert np.isnan(bands[:5, 0, 2]).all()  # too little tissue: NaN in every band, not 175,000
    assert tissue == pytest.approx([0.01, 0.005, 0.0004])
    assert bands[0, 0, 0] == pytest.approx(200) and bands[1, 0, 0] == 0  # "unclassified" counts
    assert total[0] == pytest.approx(1300)  # the untyped one counts in the total only
    assert (geo["nuclei"], geo["nuclei_counted"], geo["cells_counted"]) == (30, 23, 2)


def test_a_density_grid_needs_cells_and_a_resolution():
    assert DensityGrid((600, 200), SLIDE_MPP, 100).cell_px == 200
    for grid_um, slide_mpp in ((0, SLIDE_MPP), (100, 0), (-5, SLIDE_MPP)):
        with pytest.raises(ValueError, match="both > 0"):
            DensityGrid((600, 200), slide_mpp, grid_um)
    with pytest.raises(ValueError, match="mask 0"):
        density_maps(np.zeros((0, 2)), np.zeros(0), 1, np.ones((2, 2), bool), 0, GRID)


def test_the_minimum_tissue_share_and_cells_cut_by_the_slide_edge():
    mask = np.ones((50, 75), bool)  # 150 x 100 um: a whole cell and a half cell at the edge
    xy = np.concatenate([_at(0, 4), np.array([[250.0, 20.0], [299.9, 199.9]])])
    bands, geo = density_maps(
        xy, np.full(6, 1), 2, mask, MASK_MPP, DensityGrid((300, 200), SLIDE_MPP, 100)
    )
    assert geo["grid_shape"] == [1, 2]
    assert bands[2, 0] == pytest.approx([400, 400])  # 2 nuclei in the half cell's 0.005 mm^2
    # a stricter minimum (share of a whole cell) drops the half cell
    bands, _ = density_maps(
        xy, np.full(6, 1), 2, mask, MASK_MPP, DensityGrid((300, 200), SLIDE_MPP, 100, 0.6)
    )
    assert bands[2, 0, 0] == pytest.approx(400) and np.isnan(bands[2, 0, 1])


def test_tissue_of_mask_pixels_cut_by_cell_edges_is_their_share_inside():
    # 3-um mask pixels on 100-um cells: edges cut pixels. Independently: each mask pixel as
    # 3 x 3 pixels of 1 um, summed over exact 100 x 100 blocks.
    rng = np.random.default_rng(1)
    mask = rng.random((70, 90)) < 0.6  # 270 x 210 um
    fine = np.kron(mask, np.ones((3, 3), bool))
    fine = np.pad(fine, ((0, 300 - fine.shape[0]), (0, 300 - fine.shape[1])))
    expected = fine.reshape(3, 100, 3, 100).sum(axis=(1, 3)) * 1e-6
    got = cell_tissue_mm2(mask, 3.0, 0.25, 400, (3, 3))
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_the_file_keeps_bands_and_geometry(tmp_path, caplog):
    mask = np.ones((50, 100), bool)
    mask[:, 60:] = False
    bands, geo = density_maps(
        _at(0, 5), np.full(5, 1), 3, mask, MASK_MPP, DensityGrid((400, 200), 0.5, 100)
    )
    geo = {**geo, "bands": ["unclassified", "a", "b", "total", "tissue_mm2"], "slide": "s.svs"}
    path = tmp_path / "s.density.tif"
    write_density_tiff(path, bands, geo)
    back, doc = read_density_tiff(path)
    np.testing.assert_array_equal(back, bands)  # NaN where NaN
    assert {k: doc[k] for k in geo} == geo and doc["format"] == "hovernet density map"
    # any TIFF reader: (bands, rows, cols) float32, resolution tags of 100 um cells
    with caplog.at_level("WARNING", logger="tifffile"):
        plain = tifffile.imread(path)
    assert plain.shape == (5, 1, 2) and plain.dtype == np.float32
    assert not caplog.records  # a "shape" key in the description made tifffile warn
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.tags["XResolution"].value == (100, 1) and page.resolutionunit == 3  # cm
    assert not list(tmp_path.glob(".*tmp*"))
    other = tmp_path / "x.tif"
    tifffile.imwrite(other, np.zeros((4, 4), np.float32), description="{}", metadata=None)
    with pytest.raises(HoverNetError, match="not a hovernet density map"):
        read_density_tiff(other)


def test_a_cell_side_under_the_minimum_is_refused_naming_the_option(tmp_path):
    with pytest.raises(HoverNetError, match="--density_grid_um 2"):
        SlideConfig(tmp_path, density_grid_um=2)
    assert SlideConfig(tmp_path, density_grid_um=0).density_grid_um == 0


# ----------------------------------------------------------------------------------------------
# slide mode


def _run(image, out, slide_cls=ArraySlide, **kw):
    config = SlideConfig(out, proc_mpp=0.25, region_size=328, quiet=True, post_proc_workers=0, **kw)
    slide = slide_cls(Path("slide.svs"), image, 0.25)
    (result,) = run_slides(
        BlobNet(), [slide.path], config, lambda line: None, lambda p, c: slide, dark_tissue
    )
    return result, output_paths(out, "slide")


def _disks(width=560, height=550, step=41) -> np.ndarray:
    centres = [(x, y) for y in range(40, height - 20, step) for x in range(40, width - 20, step)]
    return disk_image((height, width), centres)


def test_a_resumed_slide_writes_the_same_density_map(tmp_path):
    image = _disks()
    done, ref = _run(image, tmp_path / "ref", density_grid_um=50)
    assert done.status == "done", done.reason
    config = SlideConfig(tmp_path, proc_mpp=0.25, region_size=328)
    _, _, mask, mask_mpp = dark_tissue(ArraySlide(Path("s.svs"), image, 0.25), "slide", config)
    n_calibration = len(calibration_windows(mask, Grid(mask_mpp), Grid(0.25), 560, 550))

    class Failing(ArraySlide):
        reads = 0

        def read(self, *args):
            Failing.reads += 1
            if Failing.reads > n_calibration + 2:  # 2 of 4 regions, then the disk goes
                raise OSError("disk gone")
            return super().read(*args)

    result, paths = _run(image, tmp_path / "out", Failing, density_grid_um=50)
    assert result.status == "failed" and not paths["density"].exists()
    result, paths = _run(image, tmp_path / "out", density_grid_um=50)
    assert result.status == "done" and 0 < result.summary["regions_this_run"], result.reason
    assert paths["density"].read_bytes() == ref["density"].read_bytes()
    assert paths["density_png"].read_bytes() == ref["density_png"].read_bytes()


def test_the_density_map_counts_only_processed_tissue_and_can_be_turned_off(tmp_path):
    # 2 x 2 regions: the top-left one all tissue, the others sparse disks on glass. With a
    # minimum tissue share only the first is processed: the others' tissue (the disks) must
    # not count as tissue without nuclei
    image = _disks()
    top = image[:300, :300]
    top[(top == 255).all(axis=2)] = (200, 196, 204)
    result, paths = _run(image, tmp_path, min_tissue_fraction=0.3)
    assert result.status == "done" and result.summary["regions_tissue"] == 1
    bands, geo = read_density_tiff(paths["density"])
    summary = json.loads(paths["summary"].read_text())
    assert float(np.sum(bands[-1], dtype=np.float64)) == pytest.approx(summary["tissue_mm2"])
    _, _, mask, mask_mpp = dark_tissue(ArraySlide(Path("s.svs"), image, 0.25), "slide", None)
    assert summary["tissue_mm2"] < 0.9 * tissue_area_mm2(mask, mask_mpp)  # some left out
    assert geo["nuclei"] == summary["nuclei"] and geo["bands"][-2:] == ["total", "tissue_mm2"]
    assert {"slide.density.tif", "slide.density.png"} <= set(summary["outputs"])
    result, paths = _run(image, tmp_path, min_tissue_fraction=0.3, overwrite=True,
                         density_grid_um=0)  # fmt: skip
    assert result.status == "done" and not paths["density"].exists()
    assert not paths["density_png"].exists()
    assert not {"slide.density.tif", "slide.density.png"} & set(result.summary["outputs"])


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """The bundled model on a 1024 px crop of the demo slide, 100 um cells (the default): the
    viewer's tests' output, made once per session."""
    return slide_output(tmp_path_factory.getbasetemp() / "view_real")


def test_on_the_demo_slide_density_times_tissue_gives_the_csv_counts(demo_out):
    paths = output_paths(demo_out, "cmu_crop")
    bands, geo = read_density_tiff(paths["density"])
    summary = json.loads(paths["summary"].read_text())
    names = [summary["type_info"][str(t)][0] for t in range(1, 5)]
    assert geo["bands"] == ["unclassified", *names, "total", "tissue_mm2"]
    assert geo["band_types"] == [0, 1, 2, 3, 4, None, None]
    assert geo["grid_um"] == 100 and geo["cell_px"] == pytest.approx(100 / 0.499)
    cell, (rows, cols) = geo["cell_px"], geo["grid_shape"]
    assert rows == cols == int(np.ceil(CROP[2] / cell))
    tissue = bands[-1].astype(np.float64)
    counted = np.isfinite(bands[-2])
    # the CSV's nuclei binned by their level-0 centroid, per class, in the counted cells
    with open(paths["csv"], newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == summary["nuclei"] == geo["nuclei"]
    expected = np.zeros((len(geo["bands"]) - 1, rows, cols))
    for row in csv_rows:
        r = int(float(row["centroid_y"]) // cell)
        c = int(float(row["centroid_x"]) // cell)
        expected[int(row["type"]), r, c] += 1  # band k is type k
        expected[-1, r, c] += 1
    for k in range(len(expected)):
        got = (bands[k][counted] * tissue[counted]).sum()
        assert got == pytest.approx(expected[k][counted].sum(), rel=1e-5), geo["bands"][k]
    assert expected[-1][counted].sum() == geo["nuclei_counted"] >= 0.99 * geo["nuclei"]
    assert tissue.sum() == pytest.approx(summary["tissue_mm2"], rel=1e-5)
    # the PNG beside the overlay: a panel per class and the total
    png = cv2.imread(str(paths["density_png"]))
    assert png is not None and png.shape[0] > 2 * rows and png.shape[1] > 3 * cols


def test_the_viewer_lists_the_slide_once_and_a_rerun_skips_it(demo_out):
    from hovernet.infer.loading import LoadOptions, load_for_inference
    from hovernet.view.catalog import load_slides

    slides = load_slides(demo_out)
    try:
        assert [s.name for s in slides] == ["cmu_crop"]
    finally:
        for s in slides:
            s.close()
    paths = output_paths(demo_out, "cmu_crop")
    stamp = paths["density"].stat().st_mtime_ns
    model, type_info = load_for_inference(LoadOptions(model_path=None, device="cpu"))
    config = SlideConfig(demo_out, type_info=type_info, post_proc_workers=0, quiet=True)
    crop = demo_out.parent / "cmu_crop.tif"
    (result,) = run_slides(model, [crop], config, log=lambda line: None)
    assert result.status == "skipped"
    assert paths["density"].stat().st_mtime_ns == stamp
