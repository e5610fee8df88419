"""Geometry presets shared by the network, patch extraction and inference.

One frozen dataclass per use, validated once where it is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from hovernet.errors import HoverNetError

# the resolution (um/px, 40x) the original's pixel constants are given in
ORIGINAL_MPP = 0.25

# the architectures' names (hovernet.model.registry), each with its geometry in GEOMETRY below
MODES = ("original", "fast", "lite", "lite-wide", "lite-deep")


@dataclass(frozen=True)
class ModelGeometry:
    """Input and output patch size of the network (square patches, pixels)."""

    mode: str
    input_size: int
    output_size: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HoverNetError(f"unknown model mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.output_size <= 0 or self.output_size > self.input_size:
            raise HoverNetError(
                f"output size {self.output_size} must be in 1..input size {self.input_size}"
            )

    @property
    def margin(self) -> int:
        """Pixels lost on each side between input and output."""
        return (self.input_size - self.output_size) // 2


GEOMETRY = {
    # original mode: valid convolutions in the decoder, 270 -> 80
    "original": ModelGeometry("original", 270, 80),
    # fast mode: "same" padding in the decoder, 256 -> 164
    "fast": ModelGeometry("fast", 256, 164),
    # lite (hovernet.model.lite): "same" padding, a 16-pixel margin cropped away, 256 -> 224
    "lite": ModelGeometry("lite", 256, 224),
    "lite-wide": ModelGeometry("lite-wide", 256, 224),  # lite at 1.5x the channels
    "lite-deep": ModelGeometry("lite-deep", 256, 224),  # lite with bottleneck blocks
}


def geometry_for(mode: str) -> ModelGeometry:
    try:
        return GEOMETRY[mode]
    except KeyError:
        raise HoverNetError(
            f"unknown model mode {mode!r}: use one of {', '.join(MODES)} (--model_mode)"
        ) from None


def area_at_mpp(pixels: float, mpp: float) -> int:
    """An area of the original's, `pixels` at 40x, in pixels at `mpp` um/px (at least 1)."""
    if not mpp > 0:
        raise HoverNetError(f"mpp must be a positive number of microns per pixel, got {mpp}")
    return max(1, int(pixels * (ORIGINAL_MPP / mpp) ** 2 + 0.5))
