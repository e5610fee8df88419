"""lite-wide and lite-deep, and growing a trained lite into them with its outputs kept."""

from __future__ import annotations

import pytest
import torch
from test_lite import CONSEP, flops_per_output_pixel, lite

from hovernet.errors import HoverNetError
from hovernet.io.slides import read_rgb
from hovernet.model.checkpoints import load_model, save_checkpoint
from hovernet.model.grow import deepen_lite, widen_lite
from hovernet.model.lite import DEEP, LITE, WIDE, LiteWidths
from hovernet.model.registry import build_model


@pytest.fixture(scope="module")
def patch() -> torch.Tensor:
    return torch.from_numpy(read_rgb(CONSEP)).permute(2, 0, 1)[None].float()


def test_lite_wide_widths_size_and_cost():
    assert WIDE == LITE.scaled(1.5)
    assert WIDE.encoder == (24, 48, 96, 144, 192) and WIDE.branch == (24, 24)
    model = build_model("lite-wide", 5)
    assert (model.mode, model.widths, model.geometry.output_size) == ("lite-wide", WIDE, 224)
    params = sum(p.numel() for p in model.parameters())
    assert 1.7e6 < params < 2.1e6
    ratio = flops_per_output_pixel("lite-wide") / flops_per_output_pixel("lite")
    assert 2.0 < ratio < 2.5
    with pytest.raises(HoverNetError, match="5 encoder levels"):
        LiteWidths(encoder=(16, 32, 64, 96))
    with pytest.raises(HoverNetError, match="must be positive"):
        LiteWidths(branch=(16, 0))
    with pytest.raises(HoverNetError, match="bottleneck_blocks must be 0 or more"):
        LiteWidths(bottleneck_blocks=-1)
    deep = build_model("lite-deep", 5)
    assert deep.widths == DEEP and len(deep.bottleneck) == 2
    assert 1.3e6 < sum(p.numel() for p in deep.parameters()) < 1.6e6
    assert 1.0 < flops_per_output_pixel("lite-deep") / flops_per_output_pixel("lite") < 1.1


def grown_with_gradients(grow, small, arch: str, patch: torch.Tensor):
    """`small` grown into `arch`: the same outputs (checked), then one backward pass in
    training mode, so that the caller can check that the added parts get gradients."""
    torch.manual_seed(1)
    grown = grow(small, build_model(arch, small.nr_types)).eval()
    with torch.no_grad():
        before, after = small(patch), grown(patch)
    for name in ("np", "hv", "tp"):
        assert before[name].abs().max() > 0.1
        assert torch.allclose(after[name], before[name], rtol=1e-5, atol=1e-4), name
    grown.train()
    sum(v.float().pow(2).mean() for v in grown(patch).values()).backward()
    return grown


def test_widened_network_computes_the_same_outputs(patch):
    wide = grown_with_gradients(widen_lite, lite(4, seed=3), "lite-wide", patch)
    # the extra channels are trainable at once: the zero block gets gradients
    conv = wide.trunk[1][0].conv  # reads the up-sampled trunk and the level-2 skip
    assert torch.all(conv.weight[:64, 96:144] == 0)  # old outputs <- the trunk's extra channels
    assert conv.weight.grad[:64, 96:144].abs().sum() > 0


def test_deepened_network_computes_the_same_outputs_and_trains_its_blocks(patch):
    shallow = lite(4, seed=5)
    deep = grown_with_gradients(deepen_lite, shallow, "lite-deep", patch)
    # the blocks start as the identity but are not dead: the zero BatchNorm weight has a gradient
    for block in deep.bottleneck:
        bn = block.convs[1].bn
        assert torch.all(bn.weight == 0) and bn.weight.grad.abs().sum() > 0
    with pytest.raises(HoverNetError, match="only bottleneck blocks may be added"):
        deepen_lite(shallow, build_model("lite-wide", 4))
    with pytest.raises(HoverNetError, match="no bottleneck blocks"):
        widen_lite(deep, build_model("lite-wide", 4))


def test_grown_checkpoints_are_recognised(tmp_path):
    narrow = lite(5, seed=2)
    wide = widen_lite(narrow, build_model("lite-wide", 5))
    save_checkpoint(tmp_path / "wide.pth", wide, mpp=0.5)
    torch.save({"desc": wide.state_dict()}, tmp_path / "bare.pth")  # no recorded mode
    for name in ("wide.pth", "bare.pth"):
        loaded = load_model(tmp_path / name)
        assert (loaded.mode, loaded.nr_types) == ("lite-wide", 5)
    torch.save({"desc": narrow.state_dict()}, tmp_path / "narrow.pth")
    assert load_model(tmp_path / "narrow.pth").mode == "lite"
    with pytest.raises(HoverNetError, match="24 first-layer channels.*--model_mode lite-wide"):
        load_model(tmp_path / "bare.pth", mode="lite")
    deep = deepen_lite(narrow, build_model("lite-deep", 5))
    torch.save({"desc": deep.state_dict()}, tmp_path / "deep.pth")
    assert load_model(tmp_path / "deep.pth").mode == "lite-deep"
    with pytest.raises(HoverNetError, match="bottleneck blocks.*--model_mode lite-deep"):
        load_model(tmp_path / "deep.pth", mode="lite")


def test_widen_refuses_what_does_not_fit():
    with pytest.raises(HoverNetError, match="3 and 5 type channels"):
        widen_lite(lite(3), build_model("lite-wide", 5))
    with pytest.raises(HoverNetError, match="narrower"):
        widen_lite(build_model("lite-wide", 3), lite(3))


def test_training_a_grown_architecture_from_a_lite_checkpoint_says_how(tmp_path):
    from hovernet.model.checkpoints import init_from_checkpoint

    save_checkpoint(tmp_path / "lite.pth", lite(5))
    with pytest.raises(HoverNetError, match="pass --arch lite .*grow it into lite-deep first"):
        init_from_checkpoint(build_model("lite-deep", 5), tmp_path / "lite.pth")
