"""Tissue masks (hovernet.infer.tissue) on real slides and synthetic thumbnails."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA

from hovernet.infer.tissue import (
    TissueParams,
    mask_from_user_image,
    mask_mpp,
    tissue_area_mm2,
    tissue_mask,
)
from hovernet.io.wsi import open_slide


def _blob_thumb(h: int = 400, w: int = 600) -> np.ndarray:
    """White glass with one pink 'tissue' disc of radius 100 px and a few specks of dust."""
    thumb = np.full((h, w, 3), 243, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 200) ** 2 + (xx - 250) ** 2 <= 100**2
    rng = np.random.default_rng(1)
    thumb[disc] = np.clip(rng.normal((200, 120, 170), 12, (disc.sum(), 3)), 0, 255).astype(np.uint8)
    thumb[50:52, 500:502] = (90, 40, 120)  # dust: 2 x 2 px
    return thumb, disc


def test_white_slide_has_no_tissue():
    white = np.full((300, 500, 3), 245, np.uint8)
    white += np.random.default_rng(0).integers(0, 6, white.shape, dtype=np.uint8)  # glass noise
    assert not tissue_mask(white, mpp=8.0).any()
    assert not tissue_mask(np.full((50, 50, 3), 255, np.uint8)).any()
    assert not tissue_mask(white, TissueParams(method="grey"), mpp=8.0).any()


@pytest.mark.parametrize("method", ["saturation", "grey"])
def test_disc_found_and_dust_dropped(method):
    thumb, disc = _blob_thumb()
    params = TissueParams(method=method, margin_um=0)
    mask = tissue_mask(thumb, params, mpp=8.0)
    assert not mask[40:60, 490:510].any()  # dust speck removed (area << min_area_um2)
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou > 0.97
    # a margin grows the mask by about margin_um / mpp pixels
    wider = tissue_mask(thumb, TissueParams(method=method, margin_um=80), mpp=8.0)
    assert wider.sum() > mask.sum() * 1.15 and (wider >= mask).all()
    assert tissue_area_mm2(mask, 8.0) == pytest.approx(disc.sum() * 64e-6, rel=0.05)


def test_all_tissue_thumbnail_stays_full():
    thumb, _ = _blob_thumb()
    full = np.clip(
        np.random.default_rng(2).normal((200, 120, 170), 15, thumb.shape), 0, 255
    ).astype(np.uint8)
    assert tissue_mask(full, mpp=8.0).mean() > 0.99


def test_holes_filled_only_when_small():
    thumb, disc = _blob_thumb()
    thumb[195:205, 245:255] = 243  # a 10 x 10 px hole (6400 um^2 at 8 um/px)
    thumb[150:250, 150:200] = 243  # a large hole inside the disc (320,000 um^2)
    mask = tissue_mask(thumb, TissueParams(margin_um=0, closing_um=0), mpp=8.0)
    assert mask[195:205, 245:255].all()
    assert not mask[170:230, 160:190].any()


def test_real_slides_tissue_fraction():
    with open_slide(DATA / "wsi" / "CMU-1-Small-Region.svs") as slide:
        thumb, mpp = slide.thumbnail(1024)
    mask = tissue_mask(thumb, mpp=mpp)
    # a strip of skin on white glass: about 40 % of the field
    assert 0.3 < mask.mean() < 0.6
    assert mask[:, :40].mean() < 0.05  # left edge is glass
    assert mask[700:800, 350:500].all()  # the middle of the strip is tissue
    with open_slide(DATA / "wsi" / "tcga-cr-7395-01a-01-ts1.svs", mpp=1.0) as slide:
        thumb, mpp = slide.thumbnail(1024)
    mask = tissue_mask(thumb, mpp=mpp)
    assert 0.5 < mask.mean() < 0.8
    assert not mask[:60, :300].any()  # glass in the top-left corner


def test_user_masks():
    grey = np.zeros((10, 10), np.uint8)
    grey[2:4, 3:5] = 1
    assert mask_from_user_image(grey).sum() == 4
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[5, 5] = (0, 0, 7)
    assert mask_from_user_image(rgb).sum() == 1
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[0, :, 3] = 255
    assert mask_from_user_image(rgba).sum() == 10
    assert mask_mpp((100, 150), (3000, 2000), 0.25) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="aspect ratio"):
        mask_mpp((100, 100), (3000, 2000), 0.25)
