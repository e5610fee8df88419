"""The `lite` architecture, the registry, lite checkpoints and lite inference."""

from __future__ import annotations

import contextlib
import copy
import io

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from conftest import DATA
from torch.utils.flop_counter import FlopCounterMode

import hovernet
from hovernet.cli import main
from hovernet.config import GEOMETRY, geometry_for
from hovernet.errors import HoverNetError
from hovernet.io.slides import read_rgb
from hovernet.model.checkpoints import ModelMeta, load_model, save_checkpoint
from hovernet.model.inference import prepare_for_inference
from hovernet.model.lite import HoVerNetLite
from hovernet.model.registry import ARCHITECTURES, build_model, get_architecture

CONSEP = DATA / "consep_patches" / "images" / "test_10_000.png"  # 256 x 256
MONUSEG = DATA / "monuseg" / "images" / "TCGA-21-5784-01Z-00-DX1.png"  # 1000 x 1000
TYPE_INFO = {0: ("background", (0, 0, 0)), 1: ("tumour", (255, 0, 0)), 2: ("immune", (0, 255, 0))}


def lite(nr_types: int | None = 3, seed: int = 0) -> HoVerNetLite:
    torch.manual_seed(seed)
    model = build_model("lite", nr_types)
    # random BN statistics, so that folding and checkpoints are tested on non-trivial values
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def patch() -> torch.Tensor:
    """A real 256 x 256 CoNSeP patch as 1 x 3 x 256 x 256 float 0..255."""
    return torch.from_numpy(read_rgb(CONSEP)).permute(2, 0, 1)[None].float()


def run(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return model(x)


def test_registry_lists_and_builds_every_architecture():
    assert list(ARCHITECTURES) == ["original", "fast", "lite", "lite-wide", "lite-deep"]
    for name in ARCHITECTURES:
        with torch.device("meta"):  # the big ones: no weights, no forward pass
            model = build_model(name, 4)
        assert (model.mode, model.nr_types) == (name, 4)
        assert model.geometry == GEOMETRY[name] == get_architecture(name).geometry
        assert model.channels_last is False
        with pytest.raises(HoverNetError, match=f"{model.geometry.input_size}x"):
            model.check_input(torch.zeros(1, 3, 100, 100, device="meta"))
    with pytest.raises(HoverNetError, match="unknown architecture 'medium': use one of .*lite"):
        build_model("medium")
    with pytest.raises(HoverNetError, match="original, fast, lite"):
        geometry_for("medium")
    with pytest.raises(HoverNetError, match="nr_types must be at least 2"):
        build_model("lite", 1)


def test_lite_size_and_geometry():
    model = build_model("lite", 6)
    params = sum(p.numel() for p in model.parameters())
    assert 0.7e6 < params < 1.1e6
    assert (model.geometry.input_size, model.geometry.output_size) == (256, 224)
    assert "branches.tp.out.weight" not in build_model("lite", 0).state_dict()
    assert build_model("lite", None).nr_types is None


def flops_per_output_pixel(name: str) -> float:
    with torch.device("meta"):
        model = build_model(name, 6).eval()
    size = model.geometry.input_size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    return counter.get_total_flops() / model.geometry.output_size**2


def test_lite_has_20x_fewer_flops_per_output_pixel_than_fast():
    fast, lite_flops = flops_per_output_pixel("fast"), flops_per_output_pixel("lite")
    assert fast > 10e6  # ~298 GFLOP per 164 x 164 output
    assert fast / lite_flops >= 20


def test_lite_forward_on_real_patch(patch):
    out = run(lite(3), patch)
    assert list(out) == ["np", "hv", "tp"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "np": (1, 2, 224, 224),
        "hv": (1, 2, 224, 224),
        "tp": (1, 3, 224, 224),
    }
    for name, value in out.items():
        assert torch.isfinite(value).all(), name
        assert value.std() > 0, name  # not constant: the image reaches every head
    assert list(run(lite(None), patch)) == ["np", "hv"]
    with pytest.raises(HoverNetError, match=r"lite mode takes input .* 256 x 256.*got \(1, 3, 270"):
        lite(3)(torch.zeros(1, 3, 270, 270))


def test_branches_on_a_crop_equal_branches_on_the_whole_patch(patch):
    """forward runs the full-resolution branches on a crop only: the kept pixels must not change."""
    from hovernet.model.lite import _up
    from hovernet.model.network import centre_crop

    model = lite(3)
    captured = {}
    model.trunk[-1].register_forward_hook(lambda m, i, o: captured.update(trunk=o))
    model.encoder[0].register_forward_hook(lambda m, i, o: captured.update(skip=o))
    out = run(model, patch)
    with torch.inference_mode():
        full = _up(captured["trunk"], captured["skip"])
        for name, branch in model.branches.items():
            expected = centre_crop(branch(full), (224, 224))
            torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-5)


def test_gradients_reach_every_parameter(patch):
    model = lite(3).train()
    x = torch.cat([patch, patch.flip(-1)])
    out = model(x)
    loss = sum((v * torch.randn_like(v)).mean() for v in out.values())
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.encoder[0][0].conv.weight.grad.abs().sum() > 0
    assert {k for k, _ in model.named_parameters() if k.startswith("branches.")} >= {
        f"branches.{b}.out.weight" for b in ("np", "hv", "tp")
    }


def test_lite_checkpoint_round_trip(tmp_path, patch):
    model = lite(3)
    path = tmp_path / "lite.pth"
    save_checkpoint(path, model, type_info=TYPE_INFO, mpp=0.5)
    assert torch.load(path, weights_only=True)["mode"] == "lite"
    again = load_model(path)
    assert isinstance(again, HoVerNetLite) and not again.training
    assert again.meta == ModelMeta("lite", 3, TYPE_INFO, 0.5)
    expected, got = run(model, patch), run(again, patch)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # a bare {"desc": state_dict} (the original's format) is recognised by its keys
    torch.save({"desc": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert load_model(path, mode="lite", nr_types=3).meta == ModelMeta("lite", 3)


def test_lite_checkpoint_errors(tmp_path):
    model = lite(3)
    path = tmp_path / "lite.pth"
    save_checkpoint(path, model)
    with pytest.raises(
        HoverNetError, match=r"lite\.pth.*lite-mode checkpoint, use --model_mode lite"
    ):
        load_model(path, mode="fast")
    with pytest.raises(HoverNetError, match="has 3 type channels but --nr_types is 5"):
        load_model(path, nr_types=5)

    obj = torch.load(path, weights_only=True)
    obj["desc"]["encoder.2.0.conv.weight"] = torch.zeros(64, 16, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(obj, bad)
    with pytest.raises(
        HoverNetError,
        match=r"bad\.pth does not fit HoVer-Net \(lite mode.*wrongly shaped.*encoder\.2\.0\.conv",
    ):
        load_model(bad)

    obj = torch.load(path, weights_only=True)
    obj["nr_types"] = 5  # recorded types that the weights do not have
    torch.save(obj, bad)
    with pytest.raises(HoverNetError, match=r"bad\.pth: recorded mode/nr_types \(lite, 5\)"):
        load_model(bad)

    obj = torch.load(path, weights_only=True)
    del obj["desc"]["trunk.0.0.bn.weight"]
    torch.save(obj, bad)
    with pytest.raises(HoverNetError, match=r"bad\.pth.*missing weights.*trunk\.0\.0\.bn\.weight"):
        load_model(bad)


def test_prepare_for_inference_keeps_outputs(patch):
    model = lite(3)
    expected = run(model, patch)
    for channels_last in (False, True):
        prepared = prepare_for_inference(copy.deepcopy(model), channels_last=channels_last)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
        got = run(prepared, patch)
        for name in expected:
            err = (got[name] - expected[name]).norm() / expected[name].norm()
            assert err < 1e-5, (channels_last, name, float(err))
    with pytest.raises(HoverNetError, match="prepared for inference"):
        save_checkpoint("unused.pth", prepared)


def test_segment_image_with_lite():
    image = read_rgb(MONUSEG)[100:400, 200:600]  # 300 x 400: 2 x 2 windows of 224
    model = lite(3)
    with torch.no_grad():
        model.branches["np"].out.bias[1] += 2.0  # favour "nucleus" so that nuclei appear
    inst_map, nuclei, pred_map = hovernet.segment_image(prepare_for_inference(model), image)
    assert inst_map.shape == (300, 400)
    assert pred_map.shape[:2] == (300, 400)
    assert np.isfinite(pred_map).all()
    labels = set(np.unique(inst_map).tolist()) - {0}
    assert set(nuclei) == labels and len(labels) > 1


def test_infer_cli_reads_a_lite_checkpoint_without_flags(tmp_path):
    """`hovernet infer` takes mode, types and colours from a lite checkpoint: no flags needed."""
    model = lite(3)
    with torch.no_grad():
        model.branches["np"].out.bias[1] += 1.0
    save_checkpoint(tmp_path / "lite.pth", model, type_info=TYPE_INFO, mpp=0.5)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = read_rgb(MONUSEG)[:250, :300]
    cv2.imwrite(str(inputs / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    args = ["infer", f"--model_path={tmp_path / 'lite.pth'}", "--nr_post_proc_workers=1"]
    args += ["tile", f"--input_dir={inputs}", f"--output_dir={out}", "--save_raw_map"]
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code in (0, None), stderr.getvalue()
    mat = scipy.io.loadmat(out / "mat" / "a.mat")
    assert mat["inst_map"].shape == (250, 300)
    assert mat["raw_map"].shape == (250, 300, 4)  # type, nucleus probability, h, v
    assert np.isfinite(mat["raw_map"]).all()
    assert len(mat["inst_uid"]) > 0
    assert set(mat["inst_type"].ravel().tolist()) <= {0, 1, 2}
