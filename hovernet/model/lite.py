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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hovernet.config import ModelGeometry, geometry_for
from hovernet.errors import HoverNetError
from hovernet.model.network import centre_crop, check_input, check_nr_types

MODE = "lite"
BRANCH_ORDER = ("np", "hv", "tp")
# a key only a lite state dict has (checkpoints.py recognises the architecture by it)
SIGNATURE_KEY = "branches.np.out.weight"
TYPE_KEY = "branches.tp.out.weight"
FIRST_CONV_KEY = "encoder.0.0.conv.weight"  # its output channels tell lite's widths apart
BOTTLENECK_KEY = "bottleneck.0.convs.0.conv.weight"  # only lite-deep has it


@dataclass(frozen=True)
class LiteWidths:
    """The channel widths of a lite network; the layout (5 levels, 3 trunk stages, 2 branch
    convs) is fixed, so the geometry does not change with the widths."""

    encoder: tuple[int, ...] = (16, 32, 64, 96, 128)  # per level, full resolution first
    trunk: tuple[tuple[int, ...], ...] = ((96,), (64, 64), (32, 32))  # at 1/8, 1/4, 1/2
    branch: tuple[int, ...] = (16, 16)  # each branch's decoder at full resolution
    # residual blocks after the deepest level (two convs each at its width; the receptive
    # field grows by 64 px per block): 0 for lite and lite-wide
    bottleneck_blocks: int = 0

    def __post_init__(self) -> None:
        shape = (len(self.encoder), tuple(len(t) for t in self.trunk), len(self.branch))
        if shape != (5, (1, 2, 2), 2):
            raise HoverNetError(
                f"lite widths need 5 encoder levels, trunk stages of 1, 2, 2 convs and 2 branch "
                f"convs, got {self}"
            )
        if min(self.flat) < 1:
            raise HoverNetError(f"lite widths must be positive, got {self}")
        if self.bottleneck_blocks < 0:
            raise HoverNetError(f"lite bottleneck_blocks must be 0 or more, got {self}")

    @property
    def flat(self) -> tuple[int, ...]:
        """Every conv width, encoder, trunk and branch, in one tuple."""
        return self.encoder + sum(self.trunk, ()) + self.branch

    def scaled(self, factor: float) -> LiteWidths:
        """Every width times `factor`, rounded to a multiple of 8 (at least 8)."""

        def scale(widths: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(max(8, round(w * factor / 8) * 8) for w in widths)

        return LiteWidths(
            scale(self.encoder),
            tuple(scale(t) for t in self.trunk),
            scale(self.branch),
            self.bottleneck_blocks,
        )


LITE = LiteWidths()  # lite: 0.86 M parameters
WIDE = LITE.scaled(1.5)  # lite-wide: 24-48-96-144-192, ~1.9 M parameters, 2.25x the FLOPs
DEEP = LiteWidths(bottleneck_blocks=2)  # lite-deep: receptive field ~180 -> ~310 px, +0.6 M


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


class Residual(nn.Module):
    """x + convs(x), then ReLU; the second BatchNorm starts at weight 0, so a new block is the
    identity on the (non-negative) features it gets, and adding blocks to a trained network
    leaves its outputs as they were."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            conv_bn_relu(channels, channels),
            nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                    bn=nn.BatchNorm2d(channels),
                )
            ),
        )
        nn.init.zeros_(self.convs[1].bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.convs(x))


class HoVerNetLite(nn.Module):
    """Compact HoVer-Net with the registry interface (see hovernet.model.registry).

    `forward` takes N x 3 x 256 x 256 float RGB in 0..255 and returns a dict of logits
    {"np": N x 2 x 224 x 224, "hv": N x 2 x 224 x 224, "tp": N x nr_types x 224 x 224}
    ("tp" only when `nr_types` is set; None or 0: no type branch).
    """

    def __init__(self, nr_types: int | None = None, widths: LiteWidths = LITE, mode: str = MODE):
        super().__init__()
        self.mode = mode
        self.widths = widths
        self.geometry: ModelGeometry = geometry_for(mode)
        self.nr_types = check_nr_types(nr_types)
        self.channels_last = False  # set by hovernet.model.inference.prepare_for_inference
        crop = self.geometry.output_size + 2 * len(widths.branch)
        # forward crops at half resolution: exact only when the full-resolution offset is even
        assert crop % 2 == 0 and (self.geometry.input_size - crop) % 4 == 0

        encoder = widths.encoder
        self.encoder = nn.ModuleList()
        in_ch = 3
        for width in encoder:
            self.encoder.append(_stack(in_ch, (width, width)))
            in_ch = width
        # empty (no weights, the identity) for lite and lite-wide
        self.bottleneck = nn.Sequential(*(Residual(in_ch) for _ in range(widths.bottleneck_blocks)))
        self.trunk = nn.ModuleList()
        for level, stage in zip((3, 2, 1), widths.trunk, strict=True):
            self.trunk.append(_stack(in_ch + encoder[level], stage))
            in_ch = stage[-1]
        out_channels = {"np": 2, "hv": 2, "tp": self.nr_types}
        self.branches = nn.ModuleDict()
        for name in BRANCH_ORDER:
            if out_channels[name] is None:
                continue
            self.branches[name] = nn.Sequential(
                OrderedDict(
                    convs=_stack(in_ch + encoder[0], widths.branch),
                    out=nn.Conv2d(widths.branch[-1], out_channels[name], 1),
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
        x = self.bottleneck(x)
        for level, block in zip((3, 2, 1), self.trunk, strict=True):
            x = block(_up(x, skips[level]))
        # The branches run at full resolution on a crop: the output square plus one pixel per
        # 3x3 conv on each side, so the kept pixels never see the crop's zero padding and equal
        # those of running the branches on the whole patch.
        # The crop is taken before up-sampling and concatenating (x at half resolution, crop
        # offset 14 -> 7): the same pixels, without building and slicing the full 256 x 256
        # 48-channel tensor (15 % of ONNX Runtime's time at batch 8 went to that).
        out_size = self.geometry.output_size
        crop = out_size + 2 * len(self.widths.branch)
        x = _up(centre_crop(x, (crop // 2,) * 2), centre_crop(skips[0], (crop, crop)))
        return {
            name: centre_crop(branch(x), (out_size, out_size))
            for name, branch in self.branches.items()
        }
