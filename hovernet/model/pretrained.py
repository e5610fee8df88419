"""ImageNet weights for the encoder, from a local file (nothing is ever downloaded).

Two layouts are understood:

- the original project's `ImageNet-ResNet50-Preact_pytorch.tar` (`{"desc": state_dict}` with
  this network's own encoder names: `conv0./.weight`, `d0.units.0.conv1.weight`, ...): every
  tensor whose name and shape match is loaded, exactly as the original's training script does.
- a torchvision-layout ResNet-50 state dict (`conv1.weight`, `layer1.0.conv1.weight`, ...).
  torchvision's ResNet-50 is post-activation (BN after each conv, inside the residual branch)
  while HoVer-Net's is pre-activation, so only layers with the same role map:

  | torchvision                    | HoVer-Net                            |
  |--------------------------------|--------------------------------------|
  | conv1, bn1                     | conv0./, conv0.bn                    |
  | layer{L}.{i}.conv1, bn1        | d{L-1}.units.{i}.conv1, conv1/bn     |
  | layer{L}.{i}.conv2, bn2        | d{L-1}.units.{i}.conv2, conv2/bn     |
  | layer{L}.{i}.conv3             | d{L-1}.units.{i}.conv3               |
  | layer{L}.0.downsample.0        | d{L-1}.shortcut                      |

  Not mapped: `bn3` and `downsample.1` (BN on the residual branch / shortcut before the sum;
  HoVer-Net normalises the sum instead, in the next unit's `preact/bn` and the group's
  `blk_bna`), and `fc`. HoVer-Net's `preact/bn`, `blk_bna`, `conv_bot` and decoders keep their
  initial values. Note that torchvision models expect ImageNet mean/std-normalised input and pad
  the strided convs symmetrically, so these weights are a starting point for training, not a
  drop-in feature extractor.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hovernet.errors import HoverNetError
from hovernet.model.network import HoVerNet

_ENCODER_PREFIXES = ("conv0.", "d0.", "d1.", "d2.", "d3.", "conv_bot.")
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_TV_UNIT = re.compile(r"^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3])\.(\w+)$")
_TV_SHORTCUT = re.compile(r"^layer([1-4])\.0\.downsample\.0\.weight$")


@dataclass
class EncoderLoadReport:
    """What `load_encoder_weights` did: model keys loaded, source keys not used and why."""

    layout: str  # "hovernet" or "torchvision"
    loaded: list[str] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)  # source key -> reason

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} encoder tensors ({self.layout} layout), "
            f"{len(self.unused)} tensors of the file not used"
        )


def torchvision_key_map(keys) -> dict[str, str]:
    """{torchvision key: HoVer-Net key} for the layers that have the same role (see above)."""
    out = {}
    for key in keys:
        if key == "conv1.weight":
            out[key] = "conv0./.weight"
        elif key.startswith("bn1.") and key.split(".", 1)[1] in _BN_PARAMS:
            out[key] = "conv0.bn." + key.split(".", 1)[1]
        elif m := _TV_UNIT.match(key):
            layer, unit, name, param = m.groups()
            base = f"d{int(layer) - 1}.units.{unit}."
            if name.startswith("conv") and param == "weight":
                out[key] = base + name + ".weight"
            elif name in ("bn1", "bn2") and param in _BN_PARAMS:
                out[key] = f"{base}conv{name[-1]}/bn.{param}"
        elif m := _TV_SHORTCUT.match(key):
            out[key] = f"d{int(m.group(1)) - 1}.shortcut.weight"
    return out


def check_weights_file(path: str | os.PathLike) -> None:
    """Raise the one clear message for a missing encoder-weights file."""
    if not Path(path).is_file():
        raise HoverNetError(
            f"pretrained weights {path} do not exist: download "
            "ImageNet-ResNet50-Preact_pytorch.tar (or a torchvision ResNet-50 state dict) "
            "yourself and pass its path"
        )


def _read(path: Path) -> dict[str, torch.Tensor]:
    check_weights_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for non-checkpoint bytes
        raise HoverNetError(
            f"{path} is not a readable PyTorch weight file ({str(exc).splitlines()[0]}): pass a "
            "state dict saved with torch.save (objects other than tensors are not loaded)"
        ) from None
    if isinstance(obj, dict):
        for wrapper in ("desc", "state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise HoverNetError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_encoder_weights(model: HoVerNet, path: str | os.PathLike) -> EncoderLoadReport:
    """Copy ImageNet encoder weights from `path` into `model` where names and shapes fit."""
    path = Path(path)
    src = _read(path)
    own = model.state_dict()
    if any(k.startswith("layer1.") for k in src):
        report = EncoderLoadReport("torchvision")
        mapping = torchvision_key_map(src)
    else:
        report = EncoderLoadReport("hovernet")
        mapping = {k: k for k in src if k.startswith(_ENCODER_PREFIXES)}
    new = {}
    for key, value in src.items():
        target = mapping.get(key)
        if target is None:
            report.unused[key] = "no equivalent in the HoVer-Net encoder"
        elif target not in own:
            report.unused[key] = f"{target} is not in this model"
        elif own[target].shape != value.shape:
            report.unused[key] = (
                f"shape {tuple(value.shape)} differs from {target} {tuple(own[target].shape)}"
            )
        else:
            new[target] = value.to(own[target].dtype)
    if not new:
        raise HoverNetError(
            f"{path} holds no encoder weights that fit HoVer-Net (keys such as "
            f"{', '.join(list(src)[:3])}): expected the original's "
            "ImageNet-ResNet50-Preact_pytorch.tar or a torchvision ResNet-50 state dict"
        )
    model.load_state_dict(new, strict=False)
    report.loaded = sorted(new)
    return report
