"""Loading/saving checkpoints (original and own format) and ImageNet encoder weights."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import recipe_arrays

from hovernet.errors import HoverNetError
from hovernet.model.checkpoints import ModelMeta, load_model, save_checkpoint
from hovernet.model.network import HoVerNet
from hovernet.model.pretrained import load_encoder_weights, torchvision_key_map

CASES = {
    "original_types5": ("original", 5),
    "fast_types6": ("fast", 6),
    "original_notype": ("original", None),
}
TYPE_INFO = {0: ("background", (0, 0, 0)), 1: ("tumour", (255, 0, 0)), 2: ("immune", (0, 255, 0))}


def recipe_state_dict(case: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in recipe_arrays(case).items()}


@pytest.fixture(scope="module")
def fast_sd():
    return recipe_state_dict("fast_types6")


def assert_state_equal(model: HoVerNet, expected: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("case", list(CASES))
def test_original_format_infers_mode_and_types(tmp_path, case):
    sd = recipe_state_dict(case)
    path = tmp_path / "orig.tar"
    torch.save({"desc": sd}, path)
    model = load_model(path)
    assert (model.mode, model.nr_types) == CASES[case]
    assert model.meta == ModelMeta(*CASES[case])
    assert not model.training
    assert_state_equal(model, sd)


def test_dataparallel_prefix_and_missing_num_batches_tracked(tmp_path, fast_sd):
    stripped = {f"module.{k}": v for k, v in fast_sd.items() if "num_batches" not in k}
    path = tmp_path / "dp.tar"
    torch.save({"desc": stripped}, path)
    model = load_model(path, mode="fast", nr_types=6)
    assert_state_equal(model, fast_sd)


def test_own_format_round_trip(tmp_path, fast_sd):
    model = load_model(_save_original(tmp_path, fast_sd))
    info = {**TYPE_INFO, 5: ("other", (1, 2, 3))}
    out = tmp_path / "sub" / "own.pth"
    save_checkpoint(out, model, type_info=info, mpp=0.25)
    assert sorted(os.listdir(out.parent)) == ["own.pth"]  # no temporary files left behind
    again = load_model(out)
    assert again.meta == ModelMeta("fast", 6, info, 0.25)
    assert_state_equal(again, fast_sd)
    # the original code reads checkpoints as torch.load(path)["desc"]: ours keep that key
    assert set(torch.load(out, weights_only=True)["desc"]) == set(fast_sd)


def test_own_format_accepts_original_type_info_json_form(tmp_path, fast_sd):
    model = load_model(_save_original(tmp_path, fast_sd))
    original_form = {"0": ["background", [0, 0, 0]], "1": ["tumour", [255, 0, 0]]}
    save_checkpoint(tmp_path / "own.pth", model, type_info=original_form)
    assert load_model(tmp_path / "own.pth").meta.type_info == {
        0: ("background", (0, 0, 0)),
        1: ("tumour", (255, 0, 0)),
    }


def _save_original(tmp_path, sd):
    path = tmp_path / "orig.tar"
    torch.save({"desc": sd}, path)
    return path


def test_mode_mismatch_message(tmp_path, fast_sd):
    path = _save_original(tmp_path, fast_sd)
    with pytest.raises(HoverNetError) as exc:
        load_model(path, mode="original")
    msg = str(exc.value)
    assert "decoder kernels are 3x3: this is a fast-mode checkpoint, use --model_mode fast" in msg
    assert str(path) in msg


def test_original_mode_mismatch_message(tmp_path):
    path = _save_original(tmp_path, recipe_state_dict("original_notype"))
    with pytest.raises(HoverNetError, match="5x5: this is an original-mode checkpoint"):
        load_model(path, mode="fast")
    with pytest.raises(HoverNetError, match="no type branch but --nr_types is 4"):
        load_model(path, nr_types=4)
    assert load_model(path, nr_types=0).nr_types is None


def test_nr_types_mismatch_message(tmp_path, fast_sd):
    path = _save_original(tmp_path, fast_sd)
    with pytest.raises(HoverNetError, match="checkpoint has 6 type channels but --nr_types is 5"):
        load_model(path, nr_types=5)


def test_wrong_shapes_and_missing_keys_name_the_file(tmp_path, fast_sd):
    bad = dict(fast_sd)
    bad["d1.units.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    path = _save_original(tmp_path, bad)
    with pytest.raises(HoverNetError, match=r"orig\.tar.*wrongly shaped.*d1\.units\.0\.conv1"):
        load_model(path)
    incomplete = {k: v for k, v in fast_sd.items() if not k.startswith("d3.")}
    path = _save_original(tmp_path, incomplete)
    with pytest.raises(HoverNetError, match=r"orig\.tar.*missing weights.*d3\."):
        load_model(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(HoverNetError, match="does not exist"):
        load_model(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(HoverNetError, match="garbage.pth is not a PyTorch checkpoint"):
        load_model(garbage)
    npz = tmp_path / "model.npz"
    np.savez(npz, a=np.zeros(2))
    with pytest.raises(HoverNetError, match="convert-checkpoint"):
        load_model(npz)
    other = tmp_path / "other.pth"
    torch.save({"desc": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(HoverNetError, match="other.pth is not a HoVer-Net checkpoint"):
        load_model(other)


class Arbitrary:
    pass


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"desc": {"x": torch.zeros(1)}, "obj": Arbitrary()}, path)
    with pytest.raises(HoverNetError, match="evil.pth was refused: .* contains Python code") as err:
        load_model(path)
    # torch's hint to load with weights_only=False is never passed on
    message = str(err.value)
    assert "weights_only" not in message and "can still be loaded" not in message
    assert "Arbitrary" in message and "\n" not in message


def test_save_checkpoint_validates_metadata(tmp_path, fast_sd):
    model = load_model(_save_original(tmp_path, fast_sd))
    with pytest.raises(HoverNetError, match=r"type ids \[7\] outside 0\.\.5"):
        save_checkpoint(tmp_path / "x.pth", model, type_info={7: ("x", (1, 2, 3))})
    with pytest.raises(HoverNetError, match="mpp"):
        save_checkpoint(tmp_path / "x.pth", model, mpp=-1.0)
    with pytest.raises(HoverNetError, match="without type branch"):
        save_checkpoint(tmp_path / "x.pth", HoVerNet("fast"), type_info=TYPE_INFO)
    assert not (tmp_path / "x.pth").exists()


# ---------------------------------------------------------------- ImageNet encoder weights


def torchvision_resnet50_shapes() -> dict[str, tuple]:
    """Key -> shape of torchvision's resnet50().state_dict(), written from its definition."""
    shapes: dict[str, tuple] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, ch):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{p}"] = (ch,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    in_ch = 64
    for layer, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for i in range(blocks):
            p = f"layer{layer}.{i}"
            unit_in = in_ch if i == 0 else 4 * width
            shapes[f"{p}.conv1.weight"] = (width, unit_in, 1, 1)
            bn(f"{p}.bn1", width)
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            bn(f"{p}.bn2", width)
            shapes[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            bn(f"{p}.bn3", 4 * width)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * width, in_ch, 1, 1)
                bn(f"{p}.downsample.1", 4 * width)
        in_ch = 4 * width
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def _random_state(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.zeros(s, dtype=torch.long)
        if k.endswith("tracked")
        else torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }


def test_encoder_weights_original_layout(tmp_path, fast_sd):
    encoder = {k: v for k, v in fast_sd.items() if not k.startswith(("decoder.", "upsample"))}
    path = tmp_path / "ImageNet-ResNet50-Preact_pytorch.tar"
    torch.save({"desc": {f"module.{k}": v for k, v in encoder.items()}}, path)
    model = HoVerNet("fast", 6)
    decoder_before = model.decoder.np.u3.conva.weight.clone()
    report = load_encoder_weights(model, path)
    assert report.layout == "hovernet"
    assert sorted(report.loaded) == sorted(encoder) and not report.unused
    state = model.state_dict()
    for key, value in encoder.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(model.decoder.np.u3.conva.weight, decoder_before)


def test_encoder_weights_torchvision_layout(tmp_path):
    tv = _random_state(torchvision_resnet50_shapes())
    path = tmp_path / "resnet50.pth"
    torch.save(tv, path)
    model = HoVerNet("original", None)
    preact_before = model.d1.units[1]._modules["preact/bn"].weight.clone()
    report = load_encoder_weights(model, path)
    assert report.layout == "torchvision"
    state = model.state_dict()
    # every conv of torchvision's ResNet-50 maps (53 = 1 + 16 units x 3 + 4 shortcuts), as do
    # the BNs that directly follow conv1 (stem) and the units' conv1/conv2 (1 + 32 BNs x 5)
    assert len(report.loaded) == 53 + 33 * 5
    np.testing.assert_array_equal(state["conv0./.weight"], tv["conv1.weight"])
    np.testing.assert_array_equal(state["d2.units.5.conv3.weight"], tv["layer3.5.conv3.weight"])
    np.testing.assert_array_equal(state["d3.shortcut.weight"], tv["layer4.0.downsample.0.weight"])
    np.testing.assert_array_equal(
        state["d1.units.2.conv2/bn.running_var"], tv["layer2.2.bn2.running_var"]
    )
    assert torch.equal(model.d1.units[1]._modules["preact/bn"].weight, preact_before)
    assert set(report.unused) == {
        k for k in tv if ".bn3." in k or "downsample.1" in k or k.startswith("fc.")
    }


def test_torchvision_map_targets_exist_with_same_shapes():
    shapes = torchvision_resnet50_shapes()
    own = HoVerNet("fast").state_dict()
    for src, dst in torchvision_key_map(shapes).items():
        assert tuple(own[dst].shape) == shapes[src], (src, dst)


def test_encoder_weights_errors(tmp_path):
    with pytest.raises(HoverNetError, match="do not exist"):
        load_encoder_weights(HoVerNet("fast"), tmp_path / "missing.tar")
    path = tmp_path / "unrelated.pth"
    torch.save({"desc": {"head.weight": torch.zeros(3)}}, path)
    with pytest.raises(HoverNetError, match="unrelated.pth holds no encoder weights"):
        load_encoder_weights(HoVerNet("fast"), path)


def test_prepared_model_is_not_saved(tmp_path):
    from hovernet.model.inference import prepare_for_inference

    model = prepare_for_inference(HoVerNet("fast"))
    with pytest.raises(HoverNetError, match="prepared for inference"):
        save_checkpoint(tmp_path / "folded.pth", model)
    assert not (tmp_path / "folded.pth").exists()
