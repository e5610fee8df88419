"""The HoVer-Net network (Graham et al. 2019), laid out so the original checkpoints load as-is.

Architecture, as in the original PyTorch port of the TensorFlow model:

- encoder: a pre-activation ResNet-50 (`conv0` 7x7, then residual groups `d0`..`d3` with 3, 4,
  6 and 3 bottleneck units; `d1`..`d3` halve the resolution), then `conv_bot` (1x1, 2048 -> 1024);
- one decoder per branch (`np`, `hv` and, with `nr_types`, `tp`), each three 2x up-samplings
  with skip connections, two dense blocks with grouped convolutions and a 1x1 output conv.

Geometry. `original` mode takes 270x270 patches and predicts the central 80x80: all decoder
convolutions are "valid" and the skip connections are centre-cropped to fit. `fast` mode takes
256x256 and predicts 164x164: it pads the first 7x7 conv so the encoder keeps the input size, and
uses 3x3 instead of 5x5 decoder kernels. In both modes the strided 3x3 convs of the encoder use
TensorFlow "same" padding, which puts the extra pixel at the bottom/right (PyTorch's symmetric
padding would shift every feature by one pixel); the other padded convs have odd kernels and
stride 1, where TF "same" padding is symmetric, so they use PyTorch's `padding=k // 2`.

The state-dict names (`conv0./.weight`, `d0.units.1.preact/bn.weight`,
`decoder.np.u3.dense.units.0.conv1/bn.weight`, `upsample2x.unpool_mat`, ...) are the original's,
slashes included, so `{"desc": state_dict}` files released for the original load with strict=True.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from hovernet.config import ModelGeometry, geometry_for
from hovernet.errors import HoverNetError

# encoder: (units, bottleneck width, output channels, stride) per residual group
ENCODER_GROUPS = ((3, 64, 256, 1), (4, 128, 512, 2), (6, 256, 1024, 2), (3, 512, 2048, 2))
BRANCH_ORDER = ("tp", "np", "hv")  # the original's decoder order (matters for state-dict order)


HOVERNET_MODES = ("original", "fast")


def check_nr_types(nr_types: int | None) -> int | None:
    """The number of type channels (None = no type branch; 0 means None, as the original's
    --nr_types=0); HoverNetError unless None, 0 or at least 2."""
    nr_types = nr_types or None
    if nr_types is not None and (isinstance(nr_types, bool) or nr_types < 2):
        raise HoverNetError(
            f"nr_types must be at least 2 (background + 1 class) or None, got {nr_types!r}"
        )
    return nr_types


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5)


def tf_same_pad(x: torch.Tensor, ksize: int, stride: int) -> torch.Tensor:
    """Zero-pad NCHW `x` as TensorFlow's "same" padding does (odd pixel at bottom/right)."""
    size = x.shape[-1]
    pad = max(ksize - (stride if size % stride == 0 else size % stride), 0)
    before = pad // 2
    return F.pad(x, (before, pad - before, before, pad - before))


def check_input(x: torch.Tensor, geometry: ModelGeometry, mode: str) -> None:
    """Refuse input that is not N x 3 x S x S (S = the architecture's input size), naming S."""
    size = geometry.input_size
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
        raise HoverNetError(
            f"HoVer-Net in {mode} mode takes input of shape N x 3 x {size} x {size} "
            f"(RGB, 0..255), got {tuple(x.shape)}: cut patches of {size}x{size} pixels"
        )


def centre_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop NCHW `x` to `size` (h, w) around its centre (extra pixel taken from bottom/right)."""
    top = (x.shape[-2] - size[0]) // 2
    left = (x.shape[-1] - size[1]) // 2
    return x[..., top : top + size[0], left : left + size[1]]


class _Named(nn.Module):
    """A module whose children have the original's names, which may contain '/'."""

    def sub(self, name: str) -> nn.Module:
        return self._modules[name]


class ResidualUnit(_Named):
    """Pre-activation bottleneck: [BN-ReLU] conv1x1-BN-ReLU conv3x3-BN-ReLU conv1x1.

    The first unit of a group has no pre-activation: its input is already normalised by the
    previous group's final BN-ReLU (`blk_bna`).
    """

    # conv -> BN pairs that prepare_for_inference folds (this module is not a Sequential)
    FOLD_PAIRS = (("conv1", "conv1/bn"), ("conv2", "conv2/bn"))

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, preact: bool):
        super().__init__()
        self.preact = preact
        self.stride = stride
        if preact:
            self.add_module("preact/bn", _bn(in_ch))
        self.add_module("conv1", nn.Conv2d(in_ch, mid_ch, 1, bias=False))
        self.add_module("conv1/bn", _bn(mid_ch))
        # stride 1: TF "same" == symmetric padding 1; stride 2: asymmetric, done in forward
        padding = 1 if stride == 1 else 0
        self.add_module("conv2", nn.Conv2d(mid_ch, mid_ch, 3, stride, padding, bias=False))
        self.add_module("conv2/bn", _bn(mid_ch))
        self.add_module("conv3", nn.Conv2d(mid_ch, out_ch, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preact:
            x = F.relu(self.sub("preact/bn")(x), inplace=True)
        x = F.relu(self.sub("conv1/bn")(self.sub("conv1")(x)), inplace=True)
        if self.stride != 1:
            x = tf_same_pad(x, 3, self.stride)
        x = F.relu(self.sub("conv2/bn")(self.sub("conv2")(x)), inplace=True)
        return self.sub("conv3")(x)


class ResidualGroup(nn.Module):
    """A group of residual units sharing one projection shortcut, closed by BN-ReLU."""

    def __init__(self, in_ch: int, n_units: int, mid_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList(
            ResidualUnit(
                in_ch if i == 0 else out_ch,
                mid_ch,
                out_ch,
                stride if i == 0 else 1,
                preact=i > 0,
            )
            for i in range(n_units)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.blk_bna = nn.Sequential(OrderedDict(bn=_bn(out_ch), relu=nn.ReLU(inplace=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        for unit in self.units:
            x = unit(x).add_(shortcut)  # unit(x) is a fresh tensor: adding in place is safe
            shortcut = x
        return self.blk_bna(x)


class DenseUnit(_Named):
    """BN-ReLU conv1x1 (-> 128) BN-ReLU grouped conv kxk (-> 32, 4 groups, valid)."""

    FOLD_PAIRS = (("conv1", "conv1/bn"),)

    def __init__(self, in_ch: int, ksize: int):
        super().__init__()
        self.add_module("preact_bna/bn", _bn(in_ch))
        self.add_module("conv1", nn.Conv2d(in_ch, 128, 1, bias=False))
        self.add_module("conv1/bn", _bn(128))
        self.add_module("conv2", nn.Conv2d(128, 32, ksize, groups=4, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.sub("preact_bna/bn")(x), inplace=True)
        x = F.relu(self.sub("conv1/bn")(self.sub("conv1")(x)), inplace=True)
        return self.sub("conv2")(x)


class DenseBlock(nn.Module):
    """Each unit's 32 new channels are appended to its (centre-cropped) input; then BN-ReLU."""

    def __init__(self, in_ch: int, ksize: int, n_units: int):
        super().__init__()
        self.units = nn.ModuleList(DenseUnit(in_ch + 32 * i, ksize) for i in range(n_units))
        out_ch = in_ch + 32 * n_units
        self.blk_bna = nn.Sequential(OrderedDict(bn=_bn(out_ch), relu=nn.ReLU(inplace=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            new = unit(x)
            x = torch.cat([centre_crop(x, new.shape[-2:]), new], dim=1)
        return self.blk_bna(x)


class UpSample2x(nn.Module):
    """2x up-sampling by the Kronecker product with `unpool_mat` (ones(2, 2): nearest)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2))
        self.nearest = False  # set by `for_inference` when unpool_mat is all ones

    def for_inference(self) -> None:
        """Called by prepare_for_inference. With `unpool_mat` all ones (every released
        checkpoint) the product is nearest-neighbour up-sampling, bit for bit: run it as
        `F.interpolate`, which exports to ONNX as one Resize that ONNX Runtime keeps in its
        blocked layout (the product exported as Mul + Reshape and took 7 % of fast mode's time
        at batch 1 in ONNX Runtime's profile)."""
        self.nearest = bool(torch.all(self.unpool_mat == 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nearest:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        n, c, h, w = x.shape
        # out[n, c, 2i + a, 2j + b] = x[n, c, i, j] * unpool_mat[a, b]
        out = x[:, :, :, None, :, None] * self.unpool_mat[:, None, :]
        return out.reshape(n, c, 2 * h, 2 * w)


def _decoder_branch(ksize: int, out_ch: int) -> nn.Sequential:
    u3 = OrderedDict(
        conva=nn.Conv2d(1024, 256, ksize, bias=False),
        dense=DenseBlock(256, ksize, 8),
        convf=nn.Conv2d(512, 512, 1, bias=False),
    )
    u2 = OrderedDict(
        conva=nn.Conv2d(512, 128, ksize, bias=False),
        dense=DenseBlock(128, ksize, 4),
        convf=nn.Conv2d(256, 256, 1, bias=False),
    )
    # stride 1, odd kernel: TF "same" padding is symmetric
    u1 = OrderedDict(conva=nn.Conv2d(256, 64, ksize, padding=ksize // 2, bias=False))
    u0 = OrderedDict(bn=_bn(64), relu=nn.ReLU(inplace=True), conv=nn.Conv2d(64, out_ch, 1))
    return nn.Sequential(
        OrderedDict(
            u3=nn.Sequential(u3), u2=nn.Sequential(u2), u1=nn.Sequential(u1), u0=nn.Sequential(u0)
        )
    )


class HoVerNet(nn.Module):
    """HoVer-Net with `np` (nucleus/background), `hv` (horizontal, vertical) and `tp` branches.

    `forward` takes N x 3 x H x W float RGB in 0..255 (H = W = `geometry.input_size`) and returns
    a dict of logits {"np": N x 2 x h x w, "hv": N x 2 x h x w, "tp": N x nr_types x h x w},
    h = w = `geometry.output_size`; "tp" only when `nr_types` is set (None or 0: no type branch).
    """

    def __init__(self, mode: str = "original", nr_types: int | None = None):
        super().__init__()
        if mode not in HOVERNET_MODES:
            raise HoverNetError(
                f"unknown HoVer-Net mode {mode!r}: use one of {', '.join(HOVERNET_MODES)} "
                "(other architectures: hovernet.model.registry.build_model)"
            )
        self.geometry: ModelGeometry = geometry_for(mode)
        nr_types = check_nr_types(nr_types)
        self.mode = mode
        self.nr_types = nr_types

        conv0 = nn.Conv2d(3, 64, 7, padding=3 if mode == "fast" else 0, bias=False)
        self.conv0 = nn.Sequential(
            OrderedDict([("/", conv0), ("bn", _bn(64)), ("relu", nn.ReLU(inplace=True))])
        )
        in_ch = 64
        for i, (n_units, mid_ch, out_ch, stride) in enumerate(ENCODER_GROUPS):
            self.add_module(f"d{i}", ResidualGroup(in_ch, n_units, mid_ch, out_ch, stride))
            in_ch = out_ch
        self.conv_bot = nn.Conv2d(2048, 1024, 1, bias=False)

        ksize = 5 if mode == "original" else 3
        out_channels = {"tp": nr_types, "np": 2, "hv": 2}
        self.decoder = nn.ModuleDict(
            (name, _decoder_branch(ksize, out_channels[name]))
            for name in BRANCH_ORDER
            if out_channels[name] is not None
        )
        self.upsample2x = UpSample2x()
        self.channels_last = False  # set by hovernet.model.inference.prepare_for_inference

    def check_input(self, x: torch.Tensor) -> None:
        check_input(x, self.geometry, self.mode)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four encoder feature maps (finest first), the last after `conv_bot`."""
        d0 = self.d0(self.conv0(x / 255.0))
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        return [d0, d1, d2, d3]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        d0, d1, d2, d3 = self.encode(x)
        # the first up-sampling and skip sum is the same for every branch: do it once
        u3_in = self.upsample2x(d3) + d2
        out = {}
        for name, branch in self.decoder.items():
            u3 = branch.u3(u3_in)
            up = self.upsample2x(u3)
            u2 = branch.u2(up + centre_crop(d1, up.shape[-2:]))
            up = self.upsample2x(u2)
            u1 = branch.u1(up + centre_crop(d0, up.shape[-2:]))
            out[name] = branch.u0(u1)
        return {name: out[name] for name in ("np", "hv", "tp") if name in out}
