"""Any registered network -> ONNX (opset 17, dynamic batch), in memory or as a file with metadata.

The graph has the network's own interface: input `image` = N x 3 x S x S float32 RGB in 0..255,
outputs the logits `np`, `hv` and (typed models) `tp`, N x C x s x s; N is free. It is made by
PyTorch's TorchScript-based exporter (`dynamo=False`), which handles the TF-style asymmetric
padding and the Kronecker up-sampling as they are; ONNX Runtime reproduces PyTorch's outputs to
float rounding (< 1e-6 relative, tested against the golden outputs).

`write_onnx` adds what inference needs besides the weights to the model's `metadata_props`
(`hovernet_format`, `mode`, `nr_types`, `type_info`, `mpp`, `input_size`, `output_size`), each a
JSON value, and writes the file atomically; `read_onnx_metadata` reads them back.

A network the exporter cannot convert raises HoverNetError naming the layer (module path) and
the operator at fault; there is no silent fallback here (the inference backend decides that).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from hovernet.errors import HoverNetError
from hovernet.io.atomic import atomic_path
from hovernet.io.type_info import TypeInfo, parse_type_info

OPSET = 17
INPUT_NAME = "image"
FORMAT_NAME = "hovernet-onnx"
FORMAT_VERSION = 1


def output_names(model: nn.Module) -> list[str]:
    return ["np", "hv"] + (["tp"] if getattr(model, "nr_types", None) is not None else [])


@contextlib.contextmanager
def _layer_tracker(model: nn.Module):
    """Yields a list that holds the names of the modules being executed (innermost last)."""
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():
        label = name or type(module).__name__

        def pre(_module, _args, label=label):
            stack.append(label)

        def post(_module, _args, _out):
            if stack:
                stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _captured_stdout_fd():
    """Capture what C++ code writes to file descriptor 1 (the exporter's graph dump on errors).

    Yields a list that holds the captured text once the block ends.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    captured: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield captured
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", errors="replace"))


def _layer_of_operator(graph_dump: str, op: str) -> str | None:
    """The module path of the first `op` node in the exporter's graph dump (None if unknown)."""
    for line in graph_dump.splitlines():
        if f"= {op}(" in line and "scope: " in line:
            scope = line.split("scope: ", 1)[1].split(" # ", 1)[0].strip()
            # "pkg.Net::/torch.nn...Sequential::odd/pkg.Layer::odd.1" -> "odd.1"
            return scope.split("/")[-1].split("::")[-1] or None
    return None


def _export_failure(model: nn.Module, exc: Exception, layer: str | None, graph_dump: str):
    mode = getattr(model, "mode", type(model).__name__)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"'((?:aten|prim|onnx)::\w+)'", str(exc))
    if layer is None and match:
        layer = _layer_of_operator(graph_dump, match.group(1))
    where = f" in layer {layer!r}" if layer else ""
    return HoverNetError(
        f"cannot export the {mode} network to ONNX{where}: {first}; run it with "
        "--backend torch, or change that layer to operators ONNX opset "
        f"{OPSET} supports"
    )


def export_onnx(model: nn.Module) -> bytes:
    """The ONNX model (serialised bytes) of `model` in eval mode, with a dynamic batch size.

    The model is traced once on a zero batch of 1 on the device of its parameters (this costs
    about one forward pass plus the conversion: a few seconds on CPU, see
    benchmarks/bench_network.py).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    size = model.geometry.input_size
    x = torch.zeros(1, 3, size, size, device=device)
    names = output_names(model)
    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    failure: Exception | None = None
    layer: str | None = None
    try:
        with (
            _layer_tracker(model) as stack,
            _captured_stdout_fd() as dump,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # tracer warnings about shape checks, deprecations
            try:
                torch.onnx.export(
                    model,
                    (x,),
                    buf,
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]},
                    do_constant_folding=True,
                )
            except Exception as exc:
                failure = exc
                layer = stack[-1] if stack else None
    finally:
        model.train(was_training)
    if failure is not None:
        raise _export_failure(model, failure, layer, "".join(dump)) from failure
    return buf.getvalue()


def metadata_props(
    model: nn.Module, type_info: TypeInfo | None = None, mpp: float | None = None
) -> dict[str, str]:
    """The metadata written into an exported file: name -> JSON text."""
    from hovernet.model.checkpoints import model_description

    values = {
        "hovernet_format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **model_description(model, type_info, mpp),
        "input_size": model.geometry.input_size,
        "output_size": model.geometry.output_size,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def write_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    type_info: TypeInfo | None = None,
    mpp: float | None = None,
    onnx_bytes: bytes | None = None,
) -> int:
    """Export `model` (or take `onnx_bytes`), add the metadata, write atomically; returns size."""
    import onnx

    proto = onnx.load_from_string(onnx_bytes if onnx_bytes is not None else export_onnx(model))
    del proto.metadata_props[:]
    for key, value in metadata_props(model, type_info, mpp).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The hovernet metadata of an exported file as Python values (mode, nr_types, ...)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise HoverNetError(f"ONNX model {path} does not exist: check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise HoverNetError(f"{path} is not an ONNX model ({type(exc).__name__}): {exc}") from None
    props = {entry.key: entry.value for entry in proto.metadata_props}
    if props.get("hovernet_format") != json.dumps(FORMAT_NAME):
        raise HoverNetError(
            f"{path} has no hovernet metadata: write it with `hovernet export-onnx`"
        )
    meta = {key: json.loads(value) for key, value in props.items()}
    if meta["type_info"] is not None:
        meta["type_info"] = parse_type_info(meta["type_info"], str(path))
    return meta
