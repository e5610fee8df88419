"""Loading a model for inference: checkpoint (or the bundled model), device, type names and
colours, inference preparation and backend. Used by `hovernet infer` and the demo.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hovernet.device import model_device, resolve_device
from hovernet.errors import HoverNetError
from hovernet.infer.backends import BACKENDS, backend_of, effective_precision, use_backend
from hovernet.io.type_info import TypeInfo, check_type_info, default_type_info, load_type_info
from hovernet.model.bundled import BUNDLED_NAME, BUNDLED_SUMMARY, bundled_model_path
from hovernet.model.checkpoints import load_model
from hovernet.model.inference import prepare_for_inference


@dataclass(frozen=True)
class LoadOptions:
    """Which model to run and how (the options `hovernet infer` takes before its sub-command)."""

    model_path: Path | None = None  # None: the bundled model
    model_mode: str | None = None  # None: from the checkpoint (checked when given)
    nr_types: int | None = None  # None: from the checkpoint; 0: no type branch
    type_info_path: Path | None = None  # None: the checkpoint's, else generated
    device: str = "auto"
    threads: int | None = None  # CPU threads for the network; None: torch's default
    precision: str = "auto"
    backend: str = "auto"  # auto, torch or onnxruntime (hovernet.infer.backends)

    def __post_init__(self) -> None:
        if self.nr_types is not None and self.nr_types < 0:
            raise HoverNetError(f"--nr_types must be 0 (no types) or more, got {self.nr_types}")
        if self.threads is not None and self.threads < 1:
            raise HoverNetError(f"--threads must be at least 1, got {self.threads}")
        if self.backend not in BACKENDS:
            raise HoverNetError(
                f"unknown --backend {self.backend!r}: use one of {', '.join(BACKENDS)}"
            )


def model_label(model_path: Path | None) -> str:
    """The model's name in messages: its path, or the bundled model's name."""
    return f"{BUNDLED_NAME} (bundled)" if model_path is None else str(model_path)


def checkpoint_id(model_path: Path | None) -> str:
    """The checkpoint's identity for honest reruns: the first 16 hex digits of the SHA-256 of
    its bytes (the bundled model's when `model_path` is None), so a retrained `best.pth` under
    the same name is another model."""
    path = bundled_model_path() if model_path is None else Path(model_path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def load_for_inference(
    opts: LoadOptions, warn: Callable[[str], None] = _warn
) -> tuple[torch.nn.Module, TypeInfo | None]:
    """(model prepared for inference, type_info) from the options; checks flags vs checkpoint."""
    if opts.model_path is None:
        opts = replace(opts, model_path=bundled_model_path())
        print(f"no --model_path: using {BUNDLED_SUMMARY}", file=sys.stderr, flush=True)
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    model = load_model(opts.model_path, device, mode=opts.model_mode, nr_types=opts.nr_types)
    meta = model.meta
    if opts.type_info_path is not None:
        type_info = load_type_info(opts.type_info_path, model.nr_types)
    elif meta.type_info is not None:
        check_type_info(meta.type_info, model.nr_types, f"type info in {opts.model_path}")
        type_info = meta.type_info
    elif model.nr_types is not None:
        type_info = default_type_info(model.nr_types)
    else:
        type_info = None
    prepare_for_inference(model, channels_last=True)
    use_backend(model, opts.backend, opts.precision, opts.threads, log=warn)
    return model, type_info


def describe_model(
    model: torch.nn.Module, type_info: TypeInfo | None, opts: LoadOptions, batch_size: int
) -> str:
    """One line: which model runs where, in which precision, batch size and runtime."""
    device = model_device(model)
    backend = backend_of(model)
    runner = "PyTorch" if backend is None else backend.describe()
    # nr_types counts class 0 (background, "unclassified"): the nucleus types are the others
    types = "no types" if model.nr_types is None else f"{model.nr_types - 1} nucleus types"
    names = ""
    if type_info:
        names = " (" + ", ".join(name for i, (name, _) in type_info.items() if i) + ")"
    precision = effective_precision(model, opts.precision)
    return (
        f"model {model_label(opts.model_path)}: {model.mode} mode, {types}{names}; "
        f"{device}, {precision}, batch {batch_size}, {runner}"
    )
