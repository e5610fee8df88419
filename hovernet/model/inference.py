"""Make a network faster for inference without changing its outputs beyond float rounding.

`prepare_for_inference(model)` works for every registered architecture:

- folds every BatchNorm that directly follows a convolution into that convolution. Exact in
  eval mode: the BN is an affine map of the conv output. The pairs are found generically:
  consecutive Conv2d -> BatchNorm2d children of any `nn.Sequential` (where child order is
  execution order), plus the pairs a module lists in its `FOLD_PAIRS` class attribute (HoVer-Net's
  residual and dense units, whose children are not run in sequence). HoVer-Net's pre-activation
  BNs (BN before ReLU before conv) cannot be folded and stay;
- calls `for_inference()` on every submodule that has it (HoVer-Net's up-sampling switches to
  `F.interpolate`, identical for its all-ones matrix);
- optionally switches to channels-last memory layout (NHWC), which oneDNN convs prefer on CPU.

The prepared model is for inference only: its state dict no longer has the trained layout
(so `save_checkpoint` refuses it) and it must not be trained.

`logits_to_maps` turns the logits of any registered network into the per-pixel maps that
post-processing reads ([nucleus probability, h, v, type softmax...]).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_pairs(module: nn.Module) -> list[tuple[str, str]]:
    pairs = list(getattr(module, "FOLD_PAIRS", ()))
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        pairs += [
            (a, b)
            for a, b in zip(names, names[1:], strict=False)
            if type(module._modules[a]) is nn.Conv2d and type(module._modules[b]) is nn.BatchNorm2d
        ]
    return pairs


def _fold(module: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = module._modules[conv_name], module._modules[bn_name]
    module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
    module._modules[bn_name] = nn.Identity()


@torch.no_grad()
def prepare_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """Fold BatchNorm into the preceding convs, optionally go channels-last; in place, eval."""
    model.eval()
    if not getattr(model, "prepared_for_inference", False):
        for module in list(model.modules()):
            for conv_name, bn_name in _fold_pairs(module):
                _fold(module, conv_name, bn_name)
            if callable(getattr(module, "for_inference", None)):
                module.for_inference()
        model.prepared_for_inference = True
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.channels_last = channels_last
    return model


def logits_to_maps(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Network logits {np, hv[, tp]} (N x C x s x s) -> N x s x s x (3 + C) [np prob, h, v, ...]."""
    parts = [
        torch.softmax(out["np"].float(), dim=1)[:, 1:],
        out["hv"].float(),
    ]
    if "tp" in out:
        parts.append(torch.softmax(out["tp"].float(), dim=1))
    return torch.cat(parts, dim=1).permute(0, 2, 3, 1)
