"""Make a HoVer-Net faster for inference without changing its outputs beyond float rounding.

`prepare_for_inference(model)`:

- folds every BatchNorm that directly follows a convolution into that convolution (`conv0`,
  and `conv1`/`conv2` of each residual unit and `conv1` of each dense unit). Exact in eval mode:
  the BN is an affine map of the conv output. The pre-activation BNs (BN before ReLU before
  conv) cannot be folded and stay;
- optionally switches to channels-last memory layout (NHWC), which oneDNN convs prefer on CPU.

The prepared model is for inference only: its state dict no longer has the original's layout
(so `save_checkpoint` refuses it) and it must not be trained.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from hovernet.model.network import DenseUnit, HoVerNet, ResidualUnit


def _fold(module: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = module._modules[conv_name], module._modules[bn_name]
    module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
    module._modules[bn_name] = nn.Identity()


@torch.no_grad()
def prepare_for_inference(model: HoVerNet, channels_last: bool = True) -> HoVerNet:
    """Fold BatchNorm into the preceding convs, optionally go channels-last; in place, eval."""
    model.eval()
    if not getattr(model, "prepared_for_inference", False):
        _fold(model.conv0, "/", "bn")
        for module in model.modules():
            if isinstance(module, ResidualUnit):
                _fold(module, "conv1", "conv1/bn")
                _fold(module, "conv2", "conv2/bn")
            elif isinstance(module, DenseUnit):
                _fold(module, "conv1", "conv1/bn")
        model.prepared_for_inference = True
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.channels_last = channels_last
    return model
