"""One batch of windows through the network alone, in and out of the host (the benchmarks'
network-only baseline; production batches go through `hovernet.infer.predict.predict_stream`)."""

from __future__ import annotations

import numpy as np
import torch

from hovernet.device import model_device
from hovernet.infer.backends import backend_of
from hovernet.infer.predict import network_maps


def run_batch(model: torch.nn.Module, patches: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
    """N x S x S x 3 uint8 windows -> N x s x s x (3 + C) float32 [np prob, h, v, softmax...]
    on the host."""
    backend = backend_of(model)
    if backend is not None:
        return backend.run(patches)
    x = torch.from_numpy(patches)
    device = model_device(model)
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    return network_maps(model, x, dtype).to("cpu").numpy()
