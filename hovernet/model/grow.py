"""Grow a trained lite network into a wider or deeper one that computes the same outputs.

Used to probe capacity without training from scratch (docs/model-card.md, "Probes"): the
grown network starts as the trained one and training can then use what was added.

Wider (`widen_lite`, lite -> lite-wide): every convolution of the wide network keeps the narrow
one's weights in its first channels; its extra output channels keep their fresh random
initialisation, and the weights from the extra input channels into the old output channels are
zero. So the old channels compute what they computed before, the extra ones compute something
the old ones ignore, and the outputs, read from the old channels only, are unchanged. Training
gives the zero weights gradients at once (the extra channels' activations are not zero), so the
extra channels come into use. Where a convolution reads a concatenation (the decoder's
up-sampled input beside an encoder skip), each part sits at its own offset in the wide network,
and the old weights are placed part by part.

Deeper (`deepen_lite`, lite -> lite-deep): every weight is copied; the added bottleneck blocks
are residual with their last BatchNorm's weight at 0 (`hovernet.model.lite.Residual`), so they
start as the identity.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from hovernet.errors import HoverNetError
from hovernet.model.lite import HoVerNetLite, LiteWidths

Parts = list[tuple[int, int]]  # (narrow, wide) channel counts of the parts an input is made of


def _input_parts(widths: tuple[LiteWidths, LiteWidths]) -> dict[str, Parts]:
    """Name of each convolution of a lite network -> the parts of its input."""
    narrow, wide = widths

    def pair(get) -> tuple[int, int]:
        return get(narrow), get(wide)

    parts: dict[str, Parts] = {}
    for level in range(len(narrow.encoder)):
        before = pair(lambda w, lv=level: w.encoder[lv - 1]) if level else (3, 3)
        parts[f"encoder.{level}.0.conv"] = [before]
        parts[f"encoder.{level}.1.conv"] = [pair(lambda w, lv=level: w.encoder[lv])]
    below = pair(lambda w: w.encoder[-1])
    for stage, level in enumerate((3, 2, 1)):
        parts[f"trunk.{stage}.0.conv"] = [below, pair(lambda w, lv=level: w.encoder[lv])]
        for k in range(1, len(narrow.trunk[stage])):
            parts[f"trunk.{stage}.{k}.conv"] = [pair(lambda w, s=stage, j=k: w.trunk[s][j - 1])]
        below = pair(lambda w, s=stage: w.trunk[s][-1])
    for name in ("np", "hv", "tp"):
        parts[f"branches.{name}.convs.0.conv"] = [below, pair(lambda w: w.encoder[0])]
        parts[f"branches.{name}.convs.1.conv"] = [pair(lambda w: w.branch[0])]
        parts[f"branches.{name}.out"] = [pair(lambda w: w.branch[1])]
    return parts


def _old_columns(parts: Parts) -> torch.Tensor:
    """Indices, in the wide input, of the narrow input's channels (in the narrow order)."""
    columns, start = [], 0
    for narrow, wide in parts:
        columns.append(torch.arange(start, start + narrow))
        start += wide
    return torch.cat(columns)


def _copy_conv(old: nn.Conv2d, new: nn.Conv2d, parts: Parts) -> None:
    out_old = old.out_channels
    columns = _old_columns(parts)
    new.weight[:out_old] = 0.0
    new.weight[:out_old, columns] = old.weight
    if old.bias is not None:
        new.bias[:out_old] = old.bias


def _copy_norm(old: nn.BatchNorm2d, new: nn.BatchNorm2d) -> None:
    n = old.num_features
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name)[:n] = getattr(old, name)
    new.num_batches_tracked.copy_(old.num_batches_tracked)


def widen_lite(narrow: HoVerNetLite, wide: HoVerNetLite) -> HoVerNetLite:
    """Copy `narrow`'s weights into `wide` (freshly built, at least as wide everywhere) so that
    `wide` computes the same outputs; returns `wide`."""
    if narrow.nr_types != wide.nr_types:
        raise HoverNetError(
            f"cannot widen: the models have {narrow.nr_types} and {wide.nr_types} type channels"
        )
    if narrow.widths.bottleneck_blocks or wide.widths.bottleneck_blocks:
        raise HoverNetError("widen_lite grows lite into lite-wide: no bottleneck blocks")
    if any(a > b for a, b in zip(narrow.widths.flat, wide.widths.flat, strict=True)):
        raise HoverNetError(f"cannot widen {narrow.widths} into the narrower {wide.widths}")
    parts = _input_parts((narrow.widths, wide.widths))
    new_modules = dict(wide.named_modules())
    with torch.no_grad():
        for name, old in narrow.named_modules():
            if isinstance(old, nn.Conv2d):
                _copy_conv(old, new_modules[name], parts[name])
            elif isinstance(old, nn.BatchNorm2d):
                _copy_norm(old, new_modules[name])
    return wide


def deepen_lite(shallow: HoVerNetLite, deep: HoVerNetLite) -> HoVerNetLite:
    """Copy `shallow`'s weights into `deep` (freshly built, the same widths plus bottleneck
    blocks, which start as the identity) so that `deep` computes the same outputs; returns it."""
    same = dataclasses.replace(deep.widths, bottleneck_blocks=shallow.widths.bottleneck_blocks)
    if shallow.nr_types != deep.nr_types or same != shallow.widths:
        raise HoverNetError(
            f"cannot deepen {shallow.mode} (nr_types {shallow.nr_types}) into {deep.mode} "
            f"(nr_types {deep.nr_types}): only bottleneck blocks may be added"
        )
    missing, unexpected = deep.load_state_dict(shallow.state_dict(), strict=False)
    added = [k for k in missing if not k.startswith("bottleneck.")]
    if added or unexpected:  # the widths matched, so this cannot happen short of a bug
        raise HoverNetError(f"cannot deepen: {added or unexpected} do not match")
    return deep  # the added blocks start as the identity (Residual's initialisation)
