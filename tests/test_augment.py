"""Augmentation: geometry applied identically to image and labels, labels intact, colour steps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from support.patchdata import mosaic_patch

from hovernet.data.augment import (
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_colour,
    augment_sample,
    random_geometry,
    warp,
)

SIZE = 270


@pytest.fixture(scope="module")
def patch():
    img, inst, typ = mosaic_patch(0)
    return img, np.dstack([inst, typ]).astype(np.int32)


def test_validation_is_an_exact_centre_crop(patch):
    img, labels = patch
    out_img, out_lab = augment_sample(img, labels, SIZE, rng=None)
    np.testing.assert_array_equal(out_img, img[135:405, 135:405])
    np.testing.assert_array_equal(out_lab, labels[135:405, 135:405])
    # smaller than the input: zero padding around the centred patch
    small_img, small_lab = augment_sample(img[:200, :200], labels[:200, :200], SIZE, rng=None)
    np.testing.assert_array_equal(small_img[35:235, 35:235], img[:200, :200])
    assert small_img[:35].max() == 0 and small_lab[:, :35].max() == 0


def test_flips_and_rot90_are_exact_permutations(patch):
    img, labels = patch
    no_affine = AugmentConfig(scale=(1, 1), rotate_deg=0, shear_deg=0, translate=0)
    crop = labels[135:405, 135:405]
    dihedral = [np.rot90(f, k) for f in (crop, crop[:, ::-1]) for k in range(4)]
    seen = set()
    for seed in range(24):
        _, out_lab = augment_sample(img, labels, SIZE, np.random.default_rng(seed), no_affine)
        matches = [i for i, d in enumerate(dihedral) if np.array_equal(out_lab, d)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))  # all 8 flips/rotations occur


def test_affine_keeps_instances_and_types_intact(patch):
    img, labels = patch
    inst, typ = labels[..., 0], labels[..., 1]
    type_of = np.zeros(inst.max() + 1, np.int64)
    type_of[inst[inst > 0]] = typ[inst > 0]
    for seed in range(5):
        _, out = augment_sample(img, labels, SIZE, np.random.default_rng(seed))
        out_inst, out_typ = out[..., 0], out[..., 1]
        assert np.isin(np.unique(out_inst), np.unique(inst)).all()  # no blended ids
        np.testing.assert_array_equal(out_typ, type_of[out_inst])  # type follows its instance
        # nucleus area scales by at most the scale range (0.8..1.2 per axis) against the crop
        ratio = (out_inst > 0).mean() / (inst[135:405, 135:405] > 0).mean()
        assert 0.6 < ratio < 1.6


def test_image_and_labels_get_the_same_geometry(patch):
    img, labels = patch
    # an image that is white exactly on nuclei must still line up with the warped labels
    marker = np.repeat(np.where(labels[..., :1] > 0, 255, 0).astype(np.uint8), 3, axis=2)
    cfg = AugmentConfig()
    for seed in range(5):
        matrix = random_geometry(np.random.default_rng(seed), img.shape[:2], SIZE, cfg)
        warped, lab = warp(marker, labels, matrix, SIZE)  # bilinear image, nearest labels
        nuclei = lab[..., 0] > 0
        differ = (warped[..., 0] > 127) != nuclei
        # disagreements only on nucleus borders (interpolation rounding), never inside
        kernel = np.ones((3, 3), np.uint8)
        inside = cv2.erode(nuclei.astype(np.uint8), kernel).astype(bool)
        outside = ~cv2.dilate(nuclei.astype(np.uint8), kernel).astype(bool)
        assert not np.any(differ & (inside | outside))
        assert differ.mean() < 0.01


def test_same_seed_same_sample_and_different_seed_differs(patch):
    img, labels = patch
    a = augment_sample(img, labels, SIZE, np.random.default_rng(7))
    b = augment_sample(img, labels, SIZE, np.random.default_rng(7))
    c = augment_sample(img, labels, SIZE, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_contrast_works(patch):
    img = patch[0][:256, :256]
    mean = img.reshape(-1, 3).mean(axis=0)
    std = img.reshape(-1, 3).std(axis=0)
    low = adjust_contrast(img, 0.75).reshape(-1, 3)
    high = adjust_contrast(img, 1.25).reshape(-1, 3)
    np.testing.assert_allclose(low.std(axis=0), 0.75 * std, rtol=0.02)
    assert np.all(high.std(axis=0) > 1.15 * std)  # clipping at 0/255 takes a little
    np.testing.assert_allclose(low.mean(axis=0), mean, atol=1.0)
    np.testing.assert_array_equal(adjust_contrast(img, 1.0), img)


def test_hue_saturation_brightness(patch):
    img = patch[0][:256, :256]
    np.testing.assert_array_equal(adjust_brightness(img, 0), img)
    bright = adjust_brightness(img, 20).astype(int)
    assert np.all(bright == np.minimum(img.astype(int) + 20, 255))
    grey = adjust_saturation(img, 0.0)
    spread = grey.astype(int).max(axis=2) - grey.astype(int).min(axis=2)
    assert spread.max() <= 1  # fully desaturated: R = G = B (up to rounding)
    hsv_in = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 0].astype(int)
    hsv_out = cv2.cvtColor(adjust_hue(img, 8), cv2.COLOR_RGB2HSV)[..., 0].astype(int)
    shift = (hsv_out - hsv_in) % 180
    saturated = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 1] > 100
    assert np.median(shift[saturated]) == 8


def test_colour_augmentation_changes_image_within_range(patch):
    img = patch[0][135:405, 135:405].copy()
    outs = [augment_colour(img, np.random.default_rng(s), AugmentConfig()) for s in range(6)]
    for out in outs:
        assert out.shape == img.shape and out.dtype == np.uint8
        assert abs(out.astype(float).mean() - img.mean()) < 45  # brightness +-26 plus the rest
    assert len({o.tobytes() for o in outs}) == len(outs)


def _stain_fit(before: np.ndarray, after: np.ndarray) -> list[tuple[float, float]]:
    """Per stain channel, the (scale, offset) that best maps `before`'s amounts to `after`'s."""
    from hovernet.data.stain import to_amounts

    a, b = to_amounts(before).reshape(-1, 3), to_amounts(after).reshape(-1, 3)
    keep = (before.reshape(-1, 3) > 0).all(1) & (before.reshape(-1, 3) < 250).any(1)
    fits = []
    for c in range(3):
        scale, offset = np.polyfit(a[keep, c], b[keep, c], 1)
        fits.append((scale, offset))
    return fits


def test_stain_jitter_scales_and_shifts_h_and_e_within_its_strength(patch):
    from hovernet.data.augment import jitter_stain

    img = patch[0]
    scales = []
    for seed in range(6):
        out = jitter_stain(img, np.random.default_rng(seed), 0.3)
        (h_scale, h_off), (e_scale, e_off), (d_scale, d_off) = _stain_fit(img, out)
        assert 0.68 <= h_scale <= 1.32 and 0.68 <= e_scale <= 1.32  # 1 +- 0.3, with rounding
        assert abs(h_off) <= 0.035 and abs(e_off) <= 0.035  # +- 0.3 / 10
        assert d_scale == pytest.approx(1.0, abs=0.05) and d_off == pytest.approx(0.0, abs=0.01)
        scales.append((h_scale, e_scale))
    assert np.ptp(np.array(scales), axis=0).min() > 0.1  # the draws vary, H and E each


def test_stain_jitter_off_leaves_the_seeded_colour_steps_as_they_were(patch):
    img = patch[0]
    plain = augment_colour(img, np.random.default_rng(3), AugmentConfig())
    same = augment_colour(img, np.random.default_rng(3), AugmentConfig(stain_jitter=0.0))
    on = augment_colour(img, np.random.default_rng(3), AugmentConfig(stain_jitter=0.2))
    np.testing.assert_array_equal(plain, same)
    assert not np.array_equal(plain, on)
    with pytest.raises(ValueError, match="stain_jitter"):
        AugmentConfig(stain_jitter=1.0)
