"""The ONNX export of a model, kept in the user's cache so that it is made once, not every run.

`cached_export(model)` returns the bytes `export_onnx(model)` would give: from the cache folder
(`hovernet.io.cache.cache_dir("onnx")`: `$HOVERNET_CACHE/onnx`, else
`~/.cache/hovernet/onnx`) when a file for the model's key is there and intact, else exported
and stored (atomically; the 8 most recently used models are kept).

The key (`model_key`) is a SHA-256 over everything the exported graph depends on: the values,
names, shapes and dtypes of every parameter and buffer (so weights changed in place, or another
checkpoint under the same file name, give another key), the source files of the network's
classes and of `hovernet/model/`, the input size, the output names, the opset and the torch and
onnx versions. A model whose `forward` is replaced on the instance or that has forward hooks
cannot be keyed by its code and is exported every time. A damaged cache file is detected (its
checksum) and exported again; a cache folder that cannot be written costs one warning.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import itertools
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from hovernet.errors import HoverNetWarning
from hovernet.io.cache import cache_dir, read_blob, write_blob
from hovernet.model.onnx_export import OPSET, export_onnx, output_names

KEY_VERSION = 1  # bump when what goes into the key or the stored bytes changes
KEEP = 8  # models kept in the cache folder


def _source_files(model: nn.Module) -> list[Path]:
    files = set(Path(__file__).parent.glob("*.py"))
    for module in model.modules():
        try:
            files.add(Path(inspect.getsourcefile(type(module))))
        except (TypeError, OSError):
            continue
    return sorted(files)


def _keyable(model: nn.Module) -> bool:
    """False when the traced code is not that of the classes: an instance `forward`, hooks."""
    for module in model.modules():
        if "forward" in module.__dict__:
            return False
        if module._forward_hooks or module._forward_pre_hooks:
            return False
    hooks = nn.modules.module
    return not (hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


def model_key(model: nn.Module) -> str | None:
    """Hex SHA-256 naming `model`'s export, or None if it cannot be keyed."""
    if not _keyable(model):
        return None
    digest = hashlib.sha256()
    try:
        onnx_version = importlib.metadata.version("onnx")  # importing onnx takes ~1.4 s
        settings = (KEY_VERSION, torch.__version__, onnx_version, OPSET)
        digest.update(repr((*settings, model.geometry.input_size, output_names(model))).encode())
        for path in _source_files(model):
            digest.update(path.name.encode() + path.read_bytes())
        tensors = itertools.chain(model.named_parameters(), model.named_buffers())
        for name, tensor in tensors:
            # its bytes in memory order (channels-last weights are not copied to hash them)
            order = sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d))
            flat = tensor.detach().cpu().permute(order).contiguous().reshape(-1)
            digest.update(repr((name, str(flat.dtype), tuple(tensor.shape), order)).encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    except Exception:  # an unusual tensor or a source that cannot be read: do not cache
        return None
    return digest.hexdigest()


def cached_export(model: nn.Module) -> tuple[bytes, float, bool]:
    """(ONNX bytes, seconds, whether they came from the cache)."""
    start = time.perf_counter()
    key = model_key(model)
    path = cache_dir("onnx") / f"{key}.onnx" if key else None
    data = read_blob(path) if path else None
    if data is not None:
        return data, time.perf_counter() - start, True
    data = export_onnx(model)
    if path is not None:
        try:
            write_blob(path, data, keep=KEEP)
        except OSError as exc:
            warnings.warn(
                HoverNetWarning(
                    f"cannot store the ONNX export in {path.parent} ({exc.strerror or exc}): "
                    "set HOVERNET_CACHE to a writable folder; until then the model is exported "
                    "on every run"
                ),
                stacklevel=2,
            )
    return data, time.perf_counter() - start, False
