"""Where and in which precision the network runs: device, autocast dtype.

The one place that turns the `--device` and `--precision` options into torch objects, used by
inference (`hovernet.infer`) and training (`hovernet.train`).

"auto" precision on a CPU is bf16 only where the CPU has AMX tiles (Intel Sapphire Rapids and
later: `amx_bf16`): there PyTorch's bf16 autocast with channels-last ran the bundled `lite`
net at 0.104 s per batch of 8 against 0.377 s in fp32 and 0.258 s through ONNX Runtime fp32.
Elsewhere it is fp32: on an AMD EPYC with `avx512_bf16` but no AMX, bf16 ran slower than ONNX
Runtime fp32 (benchmarks/bench_network.py), so bf16 there would be a slowdown.
"""

from __future__ import annotations

import functools
from pathlib import Path

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


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles with bf16 (checked at run time, never assumed)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        if check is not None and check():
            return True
    except RuntimeError:
        pass
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name (None = plain float32).

    "auto" is bf16 on CUDA devices that support it, fp16 on older GPUs, bf16 on CPUs with AMX
    (`cpu_has_amx_bf16`) and fp32 on other CPUs.
    """
    if precision not in PRECISIONS:
        raise HoverNetError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if cpu_has_amx_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
