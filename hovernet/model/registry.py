"""One registry of named network architectures: a variant is an entry here, not a code path.

Every registered network has the same interface, so training, inference, export and the
checkpoint code never branch on the architecture:

- `forward(x)` takes N x 3 x S x S float RGB in 0..255 (S = `geometry.input_size`) and returns a
  dict of logits {"np": N x 2 x s x s, "hv": N x 2 x s x s, "tp": N x nr_types x s x s}
  (s = `geometry.output_size`; "tp" only when the model has a type branch);
- attributes `mode` (the registry name), `nr_types` (None = no type branch), `geometry`
  (a `hovernet.config.ModelGeometry`) and `channels_last` (set for inference);
- `check_input(x)`: HoverNetError naming the expected input shape.

Registered: `original` and `fast` (hovernet.model.network.HoVerNet), `lite`, `lite-wide` and
`lite-deep` (hovernet.model.lite.HoVerNetLite, three shapes). Checkpoints record the name as
their "mode"; files without it (the original's) are recognised by their keys and shapes
(`Architecture.recognise`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hovernet.config import ModelGeometry, geometry_for
from hovernet.errors import HoverNetError


@dataclass(frozen=True)
class Architecture:
    """One named network: how to build it and how to recognise its state dicts."""

    name: str
    build: Callable[[int | None], nn.Module]  # nr_types -> model (random weights)
    description: str
    # state dict -> nr_types (None: untyped) if the weights are of this architecture, else
    # NOT_MINE; how a checkpoint without recorded architecture (the original's) is identified
    recognise: Callable[[Mapping[str, torch.Tensor]], int | None | object]
    # what gives the architecture away in a state dict, for error messages
    signature: str

    @property
    def geometry(self) -> ModelGeometry:
        return geometry_for(self.name)


NOT_MINE = object()


def _channels(sd: Mapping[str, torch.Tensor], key: str) -> int | None:
    weight = sd.get(key)
    return None if weight is None else int(weight.shape[0])


def _hovernet(mode: str) -> Callable[[int | None], nn.Module]:
    def build(nr_types: int | None) -> nn.Module:
        from hovernet.model.network import HoVerNet

        return HoVerNet(mode, nr_types)

    return build


HOVERNET_KERNEL_KEY = "decoder.np.u3.conva.weight"
HOVERNET_TYPE_KEY = "decoder.tp.u0.conv.weight"


def _hovernet_recogniser(ksize: int) -> Callable[[Mapping[str, torch.Tensor]], object]:
    def recognise(sd: Mapping[str, torch.Tensor]) -> int | None | object:
        kernel = sd.get(HOVERNET_KERNEL_KEY)
        if kernel is None or kernel.ndim != 4 or int(kernel.shape[-1]) != ksize:
            return NOT_MINE
        return _channels(sd, HOVERNET_TYPE_KEY)

    return recognise


def _lite(name: str) -> Callable[[int | None], nn.Module]:
    def build(nr_types: int | None) -> nn.Module:
        from hovernet.model.lite import HoVerNetLite

        return HoVerNetLite(nr_types, _lite_widths(name), name)

    return build


def _lite_widths(name: str):
    from hovernet.model.lite import DEEP, LITE, WIDE

    return {"lite": LITE, "lite-wide": WIDE, "lite-deep": DEEP}[name]


def _lite_recogniser(name: str) -> Callable[[Mapping[str, torch.Tensor]], object]:
    def recognise(sd: Mapping[str, torch.Tensor]) -> int | None | object:
        from hovernet.model.lite import BOTTLENECK_KEY, FIRST_CONV_KEY, SIGNATURE_KEY, TYPE_KEY

        widths = _lite_widths(name)
        if SIGNATURE_KEY not in sd or _channels(sd, FIRST_CONV_KEY) != widths.encoder[0]:
            return NOT_MINE
        if (BOTTLENECK_KEY in sd) != bool(widths.bottleneck_blocks):
            return NOT_MINE
        return _channels(sd, TYPE_KEY)

    return recognise


ARCHITECTURES: dict[str, Architecture] = {
    "original": Architecture(
        "original",
        _hovernet("original"),
        "HoVer-Net as published: 270 -> 80, 5x5 decoder",
        _hovernet_recogniser(5),
        "decoder kernels are 5x5",
    ),
    "fast": Architecture(
        "fast",
        _hovernet("fast"),
        "HoVer-Net fast mode (PanNuke): 256 -> 164, 3x3 decoder",
        _hovernet_recogniser(3),
        "decoder kernels are 3x3",
    ),
    "lite": Architecture(
        "lite",
        _lite("lite"),
        "compact HoVer-Net for CPUs (hovernet.model.lite): 256 -> 224, ~0.9 M parameters",
        _lite_recogniser("lite"),
        "it has the lite branch heads (branches.*.out), 16 first-layer channels, no bottleneck",
    ),
    "lite-wide": Architecture(
        "lite-wide",
        _lite("lite-wide"),
        "lite with 1.5x the channels: 256 -> 224, ~1.9 M parameters, 2.25x the FLOPs",
        _lite_recogniser("lite-wide"),
        "it has the lite branch heads (branches.*.out) and 24 first-layer channels",
    ),
    "lite-deep": Architecture(
        "lite-deep",
        _lite("lite-deep"),
        "lite with 2 residual blocks at 1/16 resolution: receptive field ~310 px, ~1.5 M params",
        _lite_recogniser("lite-deep"),
        "it has the lite branch heads (branches.*.out) and bottleneck blocks",
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise HoverNetError(
            f"unknown architecture {name!r}: use one of {', '.join(ARCHITECTURES)}"
        ) from None


def build_model(name: str, nr_types: int | None = None) -> nn.Module:
    """A freshly initialised network of the registered architecture `name`."""
    return get_architecture(name).build(nr_types)


def recognise(sd: Mapping[str, torch.Tensor]) -> tuple[Architecture, int | None] | None:
    """(architecture, nr_types) of a state dict (keys without `module.`), None if unknown."""
    for arch in ARCHITECTURES.values():
        nr_types = arch.recognise(sd)
        if nr_types is not NOT_MINE:
            return arch, nr_types
    return None
