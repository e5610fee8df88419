"""One registry of named network architectures: a variant is an entry here, not a code path.

Every registered network has the same interface, so training, inference, export and the
checkpoint code never branch on the architecture:

- `forward(x)` takes N x 3 x S x S float RGB in 0..255 (S = `geometry.input_size`) and returns a
  dict of logits {"np": N x 2 x s x s, "hv": N x 2 x s x s, "tp": N x nr_types x s x s}
  (s = `geometry.output_size`; "tp" only when the model has a type branch);
- attributes `mode` (the registry name), `nr_types` (None = no type branch), `geometry`
  (a `hovernet.config.ModelGeometry`) and `channels_last` (set for inference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from hovernet.config import ModelGeometry, geometry_for
from hovernet.errors import HoverNetError


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[int | None], nn.Module]  # nr_types -> model (random weights)
    description: str

    @property
    def geometry(self) -> ModelGeometry:
        return geometry_for(self.name)


def _hovernet(mode: str) -> Callable[[int | None], nn.Module]:
    def build(nr_types: int | None) -> nn.Module:
        from hovernet.model.network import HoVerNet

        return HoVerNet(mode, nr_types)

    return build


ARCHITECTURES: dict[str, Architecture] = {
    "original": Architecture(
        "original", _hovernet("original"), "HoVer-Net as published: 270 -> 80, 5x5 decoder"
    ),
    "fast": Architecture(
        "fast", _hovernet("fast"), "HoVer-Net fast mode (PanNuke): 256 -> 164, 3x3 decoder"
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
