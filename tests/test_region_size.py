"""Slide mode's nuclei do not depend on the region size, also for a weak model.

The original's watershed normalises the HV gradients by their extremes over whatever map it is
given; a trained model's extremes hardly depend on the map's extent, a weak model's do, and
each region of a slide was then post-processed differently (with a model trained 4 minutes on
seed_format, slide_b gave 1,575 nuclei with --region_size 1000 and 1,416 with 4000). Slide mode
now measures the extremes once per slide (`hv_calibration.calibrate_hv_ranges`) and every region
uses them. The weak model here is the bundled one with HV outputs damped where the tissue is bright
(so the extremes vary from region to region)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from scipy.spatial import cKDTree
from support.slide_helpers import ArraySlide, dark_tissue

import hovernet
from hovernet.infer.postprocess import PostprocessParams, hv_ranges, postprocess
from hovernet.infer.predict import predict_maps
from hovernet.infer.slide import run_slides
from hovernet.infer.slide_setup import SlideConfig
from hovernet.io.slides import read_rgb
from hovernet.io.store import NucleusStore


class WeakHV(torch.nn.Module):
    """The bundled model with HV amplitudes from 0.1 (bright tissue) to 1 (dark tissue)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.geometry, self.nr_types, self.mode, self.meta = (
            net.geometry, net.nr_types, net.mode, net.meta,
        )  # fmt: skip

    def forward(self, x):
        out = dict(self.net(x))
        s = out["hv"].shape[-1]
        m = (x.shape[-1] - s) // 2
        bright = x[:, :, m : m + s, m : m + s].mean(1, keepdim=True) / 255.0
        bright = torch.nn.functional.avg_pool2d(bright, 31, 1, 15)
        out["hv"] = out["hv"] * (0.1 + 0.9 * (1 - bright) ** 2)
        return out


@pytest.fixture(scope="module")
def weak():
    return WeakHV(hovernet.load_model()).eval()


def _centroids(model, image, out: Path, region_size: int) -> np.ndarray:
    slide = ArraySlide(Path("b.svs"), image, 0.5)
    config = SlideConfig(out, region_size=region_size, quiet=True, post_proc_workers=0)
    (result,) = run_slides(model, [slide.path], config, lambda line: None,
                           lambda p, c: slide, dark_tissue)  # fmt: skip
    assert result.status == "done", result.reason
    with NucleusStore(out / "b.db", {}) as store:
        assert store.meta["hv_ranges"] is not None
        return np.array([r["xy"] for r in store.nuclei()])


def test_weak_model_nuclei_do_not_depend_on_the_region_size(weak, tmp_path):
    # slide_b of seed_format (the users' own data) at the model's 0.5 um/px
    image = read_rgb(DATA / "seed_format" / "slide_b.tif")[::2, ::2][:1024, :896].copy()
    small = _centroids(weak, image, tmp_path / "small", 224)
    large = _centroids(weak, image, tmp_path / "large", 896)
    assert len(small) > 100
    assert abs(len(small) - len(large)) <= 0.01 * max(len(small), len(large))
    for a, b in ((small, large), (large, small)):
        dist, _ = cKDTree(b).query(a)
        assert np.mean(dist <= 1.0) >= 0.985


def test_the_weak_model_does_depend_on_the_extent_without_fixed_ranges(weak):
    # the reason for the fix: the original's per-map normalisation of the same maps, cut in two
    image = read_rgb(DATA / "seed_format" / "slide_b.tif")[::2, ::2][:512, :896].copy()
    with torch.inference_mode():
        maps = predict_maps(weak, image, precision="fp32").pred_map
    whole = postprocess(maps, mpp=0.5)[1]
    left = postprocess(maps[:, :448], mpp=0.5)[1]
    ksize = PostprocessParams.for_mpp(0.5).sobel_ksize
    fixed = hv_ranges([(maps[..., -2], maps[..., -1])], ksize)
    whole_fixed = postprocess(maps, mpp=0.5, ranges=fixed)[1]
    left_fixed = postprocess(maps[:, :448], mpp=0.5, ranges=fixed)[1]

    def inner(nuclei):  # away from the cut
        return sorted(tuple(np.round(r["centroid"], 1)) for r in nuclei.values()
                      if r["centroid"][0] < 400)  # fmt: skip

    assert inner(left_fixed) == inner(whole_fixed)  # fixed ranges: the cut changes nothing
    assert inner(left) != inner(whole)  # per-map ranges: it does
    # with the map's own extremes, the fixed-range path is the original bit for bit
    own_labels = postprocess(maps, mpp=0.5, ranges=fixed)[0]
    np.testing.assert_array_equal(own_labels, postprocess(maps, mpp=0.5)[0])
