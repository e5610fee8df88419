"""Where and in which precision the network runs: device, autocast dtype.

The one place that turns the `--device` and `--precision` options into torch objects, used by
inference (`hovernet.infer`) and training (`hovernet.train`).

"auto" precision on a CPU is bf16 where the CPU computes bf16 natively (AMX tiles, `amx_bf16`,
Intel Sapphire Rapids and later; or AVX-512 BF16, `avx512_bf16`, e.g. AMD Zen 4), detected at
run time: PyTorch's bf16 autocast with channels-last ran the bundled `lite` net 3.6x faster
than fp32 and 2.5x faster than ONNX Runtime fp32 with AMX (0.104 / 0.377 / 0.258 s per batch
of 8), and here, on a 2-core AMD EPYC with avx512_bf16, 1.9x and 1.6x (0.12 / 0.24 / 0.19 s;
benchmarks/bench_network.py). Elsewhere bf16 is emulated and slow, so "auto" is fp32 there
(run by PyTorch, which was as fast as ONNX Runtime fp32 end to end: `hovernet.infer.backends`).
Only these two CPU features count: AVX-512 alone, or AVX2, do not make bf16 fast.
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
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16): checked at run time,
    never assumed."""
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, name, None)
        try:
            if check is not None and check():
                return True
        except RuntimeError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name (None = plain float32).

    "auto" is bf16 on CUDA devices that support it, fp16 on older GPUs, bf16 on CPUs that
    compute it natively (`cpu_has_native_bf16`) and fp32 on other CPUs.
    """
    if precision not in PRECISIONS:
        raise HoverNetError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
