"""The network against the original: state-dict layout and golden outputs (../shared/reference)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE, recipe_arrays

from hovernet.errors import HoverNetError
from hovernet.model.inference import prepare_for_inference
from hovernet.model.network import HoVerNet, UpSample2x, tf_same_pad

CASES = {
    "original_types5": ("original", 5),
    "fast_types6": ("fast", 6),
    "original_notype": ("original", None),
}


def recipe_state_dict(case: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in recipe_arrays(case).items()}


def recipe_model(case: str) -> HoVerNet:
    with torch.device("meta"):
        model = HoVerNet(*CASES[case])
    model.load_state_dict(recipe_state_dict(case), strict=True, assign=True)
    return model.eval()


def golden(case: str) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    with np.load(REFERENCE / f"net_{case}.npz") as z:
        x = torch.from_numpy(z["input_rgb"]).permute(2, 0, 1)[None].float()
        return x, {k.removeprefix("out_"): z[k] for k in z.files if k.startswith("out_")}


def assert_matches_golden(model: HoVerNet, case: str) -> None:
    x, ref = golden(case)
    with torch.inference_mode():
        out = model(x)
    assert sorted(out) == sorted(ref)
    for name, expected in ref.items():
        got = out[name].numpy()
        assert got.shape == expected.shape, name
        err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert err < 1e-4, f"{case} {name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_state_dict_layout_equals_original(case):
    expected = json.loads((REFERENCE / f"keys_{case}.json").read_text())
    got = {k: list(v.shape) for k, v in HoVerNet(*CASES[case]).state_dict().items()}
    assert got == expected
    assert list(got) == list(expected)  # same order as the original, too


@pytest.mark.parametrize(
    "case",
    ["original_types5", "fast_types6", pytest.param("original_notype", marks=pytest.mark.slow)],
)
def test_golden_outputs(case):
    assert_matches_golden(recipe_model(case), case)


@pytest.mark.parametrize(
    "case", ["fast_types6", pytest.param("original_types5", marks=pytest.mark.slow)]
)
def test_prepared_for_inference_keeps_golden_outputs(case):
    model = prepare_for_inference(recipe_model(case), channels_last=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.conv0.modules())
    assert_matches_golden(model, case)


def test_prepare_folds_only_bn_after_conv():
    model = prepare_for_inference(copy.deepcopy(HoVerNet("fast", 3)), channels_last=False)
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # pre-activation and block-closing BNs stay, BNs right after a conv are gone
    assert bns and all(
        n.endswith(("preact/bn", "preact_bna/bn", "blk_bna.bn", "u0.bn")) for n in bns
    )


@pytest.mark.parametrize(
    ("mode", "shape", "expected"),
    [
        ("original", (1, 3, 256, 256), "N x 3 x 270 x 270"),
        ("fast", (1, 3, 270, 270), "N x 3 x 256 x 256"),
        ("fast", (1, 4, 256, 256), "N x 3 x 256 x 256"),
        ("original", (3, 270, 270), "N x 3 x 270 x 270"),
    ],
)
def test_wrong_input_names_expected_size(mode, shape, expected):
    with pytest.raises(HoverNetError, match=expected):
        HoVerNet(mode, None)(torch.zeros(shape))


def test_bad_constructor_arguments():
    with pytest.raises(HoverNetError, match="mode"):
        HoVerNet("medium")
    with pytest.raises(HoverNetError, match="nr_types"):
        HoVerNet("fast", 1)
    assert "decoder.tp.u0.conv.weight" not in HoVerNet("fast", 0).state_dict()
    assert HoVerNet("fast", 0).nr_types is None


def test_upsample_is_kronecker_with_ones():
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    expected = np.stack([np.kron(c, np.ones((2, 2))) for c in x[0].numpy()])[None]
    np.testing.assert_array_equal(UpSample2x()(x).numpy(), expected)


def test_tf_same_pad_puts_extra_pixel_bottom_right():
    x = torch.ones(1, 1, 4, 4)
    padded = tf_same_pad(x, 3, 2)  # pad 1: TF puts it after, not before
    assert padded.shape == (1, 1, 5, 5)
    assert padded[0, 0, :4, :4].eq(1).all() and padded[0, 0, 4].eq(0).all()
    assert tf_same_pad(torch.ones(1, 1, 5, 5), 3, 2).shape == (1, 1, 7, 7)  # odd: 1 + 1


def test_prepared_upsampling_is_nearest_interpolation_bit_for_bit():
    x = torch.randn(2, 8, 5, 7)
    product = UpSample2x()(x)
    up = UpSample2x()
    prepare_for_inference(up)
    assert up.nearest and torch.equal(up(x), product)
    # a matrix other than ones (never released, but loadable) keeps the product
    odd = UpSample2x()
    odd.unpool_mat.copy_(torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    prepare_for_inference(odd)
    assert not odd.nearest and torch.equal(odd(x)[:, :, 0::2, 1::2], 0.5 * x)
