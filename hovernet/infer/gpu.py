"""GPU settings of inference: the batch size from free device memory (`probe_batch_size`,
`batch_size_for`) and the network compiled for one batch shape (`compile_for_inference`)."""

from __future__ import annotations

import torch

from hovernet.device import autocast_dtype, model_device
from hovernet.errors import HoverNetError
from hovernet.infer.predict import network_maps


def batch_size_for(
    free_bytes: int, per_window: float, fixed: float = 0.0, share: float = 0.5, cap: int = 512
) -> int:
    """The largest batch whose network memory (`fixed` + `per_window` x batch) fits in `share`
    of `free_bytes` (the rest is left for the maps of the images in flight), rounded down to a
    multiple of 8 from 8 on, at most `cap`, at least 1."""
    if per_window <= 0:
        raise HoverNetError(f"memory per window must be positive, got {per_window}")
    n = int((free_bytes * share - fixed) // per_window)
    n = min(cap, n)
    return max(1, n // 8 * 8 if n >= 8 else n)


def probe_batch_size(model: torch.nn.Module, precision: str = "auto", cap: int = 512) -> int:
    """A batch size for `model` on its CUDA device from the memory that batches of 4 and 8
    windows take (peak allocated) and the device's free memory (`torch.cuda.mem_get_info`)."""
    device = model_device(model)
    if device.type != "cuda":
        raise HoverNetError(f"batch sizes are measured on CUDA devices, not on {device}")
    dtype = autocast_dtype(device, precision)
    size = model.geometry.input_size
    peaks = []
    with torch.inference_mode():
        for n in (4, 8):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            x = torch.zeros((n, size, size, 3), dtype=torch.uint8, device=device)
            network_maps(model, x, dtype)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
            del x
    per_window = max(1.0, (peaks[1] - peaks[0]) / 4)
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for(free, per_window, max(0.0, peaks[0] - 4 * per_window), cap=cap)


def compile_for_inference(model: torch.nn.Module, mode: str | None = None) -> torch.nn.Module:
    """`torch.compile` the network in place for one batch shape (`fixed_batch`: the last batch
    of a stream is filled up, so nothing recompiles); the first batch pays the compilation."""
    model.compile(dynamic=False, mode=mode)
    model.fixed_batch = True
    return model
