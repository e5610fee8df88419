"""HoVer-Net lite: a compact HoVer-Net for CPUs (0.86 M parameters, 1/77 of fast mode's
FLOPs per output pixel) with the same three branches, output layout and post-processing.

Design (a U-Net-sized encoder-decoder, every convolution 3x3 "same" + BatchNorm + ReLU):

- encoder: five levels of two convs each, 16-32-64-96-128 channels, 2x2 max-pooling between
  levels (full resolution down to 1/16: the receptive field, ~180 px, covers a nucleus and its
  neighbours at 0.5 um/px);
- shared decoder trunk: at 1/8, 1/4 and 1/2 resolution, nearest-neighbour 2x up-sampling,
  concatenation with the encoder skip, then convs (96, 64 + 64, 32 + 32 channels);
- one thin decoder per branch (`np`, `hv` and, with `nr_types`, `tp`): up-sampling to full
  resolution, concatenation with the level-0 skip, two 16-channel convs and a 1x1 output conv.

Geometry: 256 x 256 input, the central 224 x 224 predicted (a 16-pixel margin cropped away on
each side, where zero padding distorts the features; tiles overlap by 32 pixels). The input
is RGB 0..255, divided by 255 inside, as HoVer-Net does.

Every conv -> BN pair lies inside one `nn.Sequential`, so `prepare_for_inference` folds them
generically.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from hovernet.config import ModelGeometry, geometry_for
from hovernet.model.network import centre_crop, check_input, check_nr_types

MODE = "lite"
ENCODER = (16, 32, 64, 96, 128)  # channels per level, full resolution first
TRUNK = ((96,), (64, 64), (32, 32))  # conv widths of the shared decoder at 1/8, 1/4, 1/2
BRANCH = (16, 16)  # conv widths of each branch's decoder at full resolution
BRANCH_ORDER = ("np", "hv", "tp")
# a key only a lite state dict has (checkpoints.py recognises the architecture by it)
SIGNATURE_KEY = "branches.np.out.weight"
TYPE_KEY = "branches.tp.out.weight"


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_ch),
            relu=nn.ReLU(inplace=True),
        )
    )


def _stack(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers = []
    for width in widths:
        layers.append(conv_bn_relu(in_ch, width))
        in_ch = width
    return nn.Sequential(*layers)


def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """2x nearest up-sampling of `x`, concatenated with the encoder skip of that level."""
    return torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1)


class HoVerNetLite(nn.Module):
    """Compact HoVer-Net with the registry interface (see hovernet.model.registry).

    `forward` takes N x 3 x 256 x 256 float RGB in 0..255 and returns a dict of logits
    {"np": N x 2 x 224 x 224, "hv": N x 2 x 224 x 224, "tp": N x nr_types x 224 x 224}
    ("tp" only when `nr_types` is set; None or 0: no type branch).
    """

    def __init__(self, nr_types: int | None = None):
        super().__init__()
        self.mode = MODE
        self.geometry: ModelGeometry = geometry_for(MODE)
        self.nr_types = check_nr_types(nr_types)
        self.channels_last = False  # set by hovernet.model.inference.prepare_for_inference
        crop = self.geometry.output_size + 2 * len(BRANCH)
        # forward crops at half resolution: exact only when the full-resolution offset is even
        assert crop % 2 == 0 and (self.geometry.input_size - crop) % 4 == 0

        self.encoder = nn.ModuleList()
        in_ch = 3
        for width in ENCODER:
            self.encoder.append(_stack(in_ch, (width, width)))
            in_ch = width
        self.trunk = nn.ModuleList()
        for level, widths in zip((3, 2, 1), TRUNK, strict=True):
            self.trunk.append(_stack(in_ch + ENCODER[level], widths))
            in_ch = widths[-1]
        out_channels = {"np": 2, "hv": 2, "tp": self.nr_types}
        self.branches = nn.ModuleDict()
        for name in BRANCH_ORDER:
            if out_channels[name] is None:
                continue
            self.branches[name] = nn.Sequential(
                OrderedDict(
                    convs=_stack(in_ch + ENCODER[0], BRANCH),
                    out=nn.Conv2d(BRANCH[-1], out_channels[name], 1),
                )
            )

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.geometry, self.mode)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = x / 255.0
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for level, block in zip((3, 2, 1), self.trunk, strict=True):
            x = block(_up(x, skips[level]))
        # The branches run at full resolution on a crop: the output square plus one pixel per
        # 3x3 conv on each side, so the kept pixels never see the crop's zero padding and equal
        # those of running the branches on the whole patch.
        # The crop is taken before up-sampling and concatenating (x at half resolution, crop
        # offset 14 -> 7): the same pixels, without building and slicing the full 256 x 256
        # 48-channel tensor (15 % of ONNX Runtime's time at batch 8 went to that).
        out_size = self.geometry.output_size
        crop = out_size + 2 * len(BRANCH)
        x = _up(centre_crop(x, (crop // 2,) * 2), centre_crop(skips[0], (crop, crop)))
        return {
            name: centre_crop(branch(x), (out_size, out_size))
            for name, branch in self.branches.items()
        }
