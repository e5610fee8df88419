"""Where and in which precision the network runs: device, autocast dtype.

The one place that turns the `--device` and `--precision` options into torch objects, used by
inference (`hovernet.infer`) and training (`hovernet.train`).
"""

from __future__ import annotations

import torch

from hovernet.errors import HoverNetError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """ "auto"/None -> CUDA when available, else CPU; refuses CUDA on a machine without it."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise HoverNetError(f"unknown device {device!r}: use cpu, cuda, cuda:1 or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HoverNetError(f"device {device!r}: no CUDA device here; use --device cpu")
    return dev


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name (None = plain float32).

    "auto" is bf16 on CUDA devices that support it, fp16 on older GPUs, and fp32 on CPU.
    """
    if precision not in PRECISIONS:
        raise HoverNetError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
