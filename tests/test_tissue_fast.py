"""The fast tissue-mask morphology (hovernet.infer.tissue) against cv2, the way it was done before:
bit-identical masks on random and odd masks for radii 1..80, and `tissue_mask` on real thumbnails
against the previous implementation, written out here as the reference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA

import hovernet
from hovernet.infer import tissue
from hovernet.infer.tissue import (
    TissueParams,
    _close_disk,
    _dilate_disk,
    _disk,
    _median_blur,
    tissue_mask,
)
from hovernet.io.wsi import open_slide

SLIDE_A = DATA / "seed_format" / "slide_a.tif"
DEMO = Path(hovernet.__file__).parent / "samples" / "CMU-1-Small-Region.svs"


# the reference: cv2 morphology with the disk kernel, as tissue_mask did it before


def ref_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), _disk(r)).astype(bool)


def ref_erode(mask: np.ndarray, r: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), _disk(r)).astype(bool)


def ref_close(mask: np.ndarray, r: int) -> np.ndarray:
    pad = r + 1
    padded = np.pad(mask, pad).astype(np.uint8)
    padded = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, _disk(r))
    return padded[pad:-pad, pad:-pad].astype(bool)


def ref_tissue_mask(
    thumb_rgb: np.ndarray, params: TissueParams = TissueParams(), mpp: float | None = None
) -> np.ndarray:
    """tissue_mask as it was before the fast morphology: its steps with cv2 throughout."""
    steps = {"_median_blur": cv2.medianBlur, "_close_disk": ref_close, "_dilate": ref_dilate}
    saved = {name: getattr(tissue, name) for name in steps}
    try:
        for name, fn in steps.items():
            setattr(tissue, name, fn)
        return tissue_mask(thumb_rgb, params, mpp=mpp)
    finally:
        for name, fn in saved.items():
            setattr(tissue, name, fn)


# masks


def _blobs(rng: np.random.Generator, h: int, w: int, r: int) -> np.ndarray:
    """Random discs, ellipses and boxes of about the radius' size, some across the border."""
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 8))):
        cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
        ay, ax = rng.uniform(0.5, 2.5, 2) * max(1, r) / 2
        kind = rng.integers(3)
        if kind == 0:
            blob = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1
        elif kind == 1:
            blob = (abs(yy - cy) <= ay) & (abs(xx - cx) <= ax)
        else:  # a ring: hole about the radius
            d = np.hypot(yy - cy, xx - cx)
            blob = (d <= ay + ax) & (d >= ay)
        if rng.random() < 0.2:
            mask &= ~blob  # cut a piece out
        else:
            mask |= blob
    return mask


def _masks(r: int, seed: int) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    side = min(3 * r + 12, 100)
    h, w = (int(v) for v in rng.integers(1, side + 1, 2))
    out = [
        ("empty", np.zeros((h, w), bool)),
        ("full", np.ones((h, w), bool)),
        ("1x1 set", np.ones((1, 1), bool)),
        ("1x1 unset", np.zeros((1, 1), bool)),
        ("row", rng.random((1, side)) < 0.1),
        ("column", rng.random((side, 1)) < 0.1),
        ("checkerboard", (np.add.outer(np.arange(h), np.arange(w)) % 2).astype(bool)),
        ("blobs", _blobs(rng, h, w, r)),
        ("blobs big", _blobs(rng, side, side, r)),
        ("holes", ~_blobs(rng, h, w, r)),
    ]
    for p in (0.002, 0.05, 0.5, 0.97):
        out.append((f"noise {p}", rng.random((h, w)) < p))
    edge = np.zeros((h, w), bool)  # touching the borders only
    edge[0, rng.integers(w)] = edge[-1, rng.integers(w)] = True
    edge[rng.integers(h), 0] = edge[rng.integers(h), -1] = True
    out.append(("border pixels", edge))
    corners = np.zeros((side, side), bool)
    corners[[0, 0, -1, -1], [0, -1, 0, -1]] = True
    out.append(("corners", corners))
    frame = np.ones((h, w), bool)
    frame[1:-1, 1:-1] = rng.random((max(0, h - 2), max(0, w - 2))) < 0.3
    out.append(("frame", frame))
    diag = np.eye(h, w, k=int(rng.integers(-h + 1, w)), dtype=bool)
    out.append(("diagonal", diag | diag[:, ::-1]))
    return out


@pytest.mark.parametrize("r", range(1, 81))
def test_morphology_matches_cv2(r):
    for i, (name, mask) in enumerate(_masks(r, seed=r)):
        assert np.array_equal(_dilate_disk(mask, r), ref_dilate(mask, r)), ("dilate", name)
        # erosion, with cv2's border (pixels beyond the array set), from the dilation
        assert np.array_equal(~_dilate_disk(~mask, r), ref_erode(mask, r)), ("erode", name)
        # the reference closing is slow at large radii (cv2 on the padded mask): each kind of
        # mask is closed at every fourth radius, the blobs at every radius
        if i % 4 == r % 4 or name == "blobs":
            assert np.array_equal(_close_disk(mask, r), ref_close(mask, r)), ("close", name)


def test_morphology_keeps_views_and_inputs():
    rng = np.random.default_rng(5)
    base = rng.random((90, 120)) < 0.1
    keep = base.copy()
    view = base[5:80:2, 7:111:3]  # not contiguous
    for r in (3, 12, 40):
        assert np.array_equal(_dilate_disk(view, r), ref_dilate(view, r))
        assert np.array_equal(_close_disk(view, r), ref_close(view, r))
    assert np.array_equal(base, keep)


@pytest.mark.parametrize(("shape", "r"), [((1, 65600), 20), ((2, 65490), 40), ((65490, 2), 12)])
def test_long_masks_near_the_uint16_limit(shape, r):
    """Coordinates up to the top of uint16 (and past it: the cv2 fallback) stay exact."""
    rng = np.random.default_rng(1)
    mask = rng.random(shape) < 0.001
    mask.flat[[0, -1]] = True  # keep the box as large as the mask
    assert np.array_equal(_dilate_disk(mask, r), ref_dilate(mask, r))
    assert np.array_equal(~_dilate_disk(~mask, r), ref_erode(mask, r))


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_median_blur_in_stripes_matches_cv2(monkeypatch, threads):
    monkeypatch.setattr(cv2, "getNumThreads", lambda: threads)
    rng = np.random.default_rng(threads)
    for h in (1, 40, 157, 301):
        w = int(rng.integers(1, 90))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[h // 3 :] //= 3  # some structure across stripe boundaries
        for size in (3, 5, 7, 9, 15, 37):
            assert np.array_equal(_median_blur(img, size), cv2.medianBlur(img, size)), (h, size)


def _synthetic_thumb(seed: int, h: int = 260, w: int = 340) -> np.ndarray:
    """Glass with pink tissue pieces, holes, dust and a dark pen mark, touching the border."""
    rng = np.random.default_rng(seed)
    thumb = np.clip(rng.normal(240, 4, (h, w, 3)), 0, 255).astype(np.uint8)
    tissue_px = _blobs(rng, h, w, 60) | _blobs(rng, h, w, 15)
    pink = np.clip(rng.normal((200, 120, 170), 14, (int(tissue_px.sum()), 3)), 0, 255)
    thumb[tissue_px] = pink.astype(np.uint8)
    thumb[rng.random((h, w)) < 0.002] = (90, 40, 120)  # dust
    thumb[h // 2 : h // 2 + 4, : w // 3] = 10  # pen
    return thumb


@pytest.mark.parametrize("seed", range(3))
def test_tissue_mask_matches_reference_on_synthetic_thumbnails(seed):
    thumb = _synthetic_thumb(seed)
    for mpp in (0.4, 1.0, 2.5, 8.0):  # closing radius 80, 32, 13, 4; margin 40, 16, 6, 2
        for method in ("saturation", "grey"):
            params = TissueParams(method=method)
            assert np.array_equal(
                tissue_mask(thumb, params, mpp=mpp), ref_tissue_mask(thumb, params, mpp=mpp)
            ), (mpp, method)
    odd = TissueParams(closing_um=0, margin_um=40, max_hole_um2=0, smooth_um=0)
    assert np.array_equal(tissue_mask(thumb, odd, mpp=0.5), ref_tissue_mask(thumb, odd, mpp=0.5))


def _thumbnail(path: Path) -> tuple[np.ndarray, float]:
    with open_slide(path) as slide:
        return slide.thumbnail()


@pytest.mark.parametrize("which", ["slide_a", "demo"])
def test_tissue_mask_matches_reference_on_real_thumbnails(which):
    path = SLIDE_A if which == "slide_a" else DEMO
    if not path.exists():
        pytest.skip(f"{path} not found")
    thumb, mpp = _thumbnail(path)
    mpps = [mpp] if which == "slide_a" else [mpp, 2.0]  # slide_a: 0.4375 um/px, radius 73
    # slide_a has no glass: with the default bounds it is all tissue; at max_threshold 60
    # Otsu cuts its pale stroma out, a mixed mask that exercises the closing at radius 73
    params = TissueParams(max_threshold=60) if which == "slide_a" else TissueParams()
    for m in mpps:
        mask = tissue_mask(thumb, params, mpp=m)
        assert mask.any() and not mask.all()
        assert np.array_equal(mask, ref_tissue_mask(thumb, params, mpp=m)), m
    if which == "slide_a":
        assert tissue_mask(thumb, mpp=mpp).all()  # the default: no tissue dropped
    if which == "demo":
        grey = TissueParams(method="grey")
        assert np.array_equal(tissue_mask(thumb, grey, mpp=mpp), ref_tissue_mask(thumb, grey, mpp))
