"""Inference backends: what runs the network on a batch of windows.

The engine (`hovernet.infer.predict.predict_stream`, used by tile and slide mode and by
`segment_image`) runs every batch through one function, `network_maps(model, x, dtype)`.
`use_backend(model, name)` records a backend for the model (in a table keyed weakly by the
model, read back with `backend_of`); without one the batch runs through PyTorch. So the choice
is made once, where the model is loaded, and nothing downstream changes.

Backends:

- `torch`: the PyTorch model itself (CPU or CUDA, autocast per `--precision`);
- `onnxruntime`: the model exported to ONNX and run by ONNX Runtime's CPU execution provider,
  float32. The export (a traced forward pass plus the conversion: about 2 s for the bundled
  model, 5-7 s for HoVer-Net) is kept in the user's cache (`hovernet.model.onnx_cache`), so
  only the first run of a model pays it. Same outputs as PyTorch to float rounding;
- `auto`: PyTorch, in every case. Measured end to end (`benchmarks/bench_backends.py`: the CLI
  in a fresh process per run, fp32, alternating, 2-core AMD EPYC; docs/inference.md), ONNX
  Runtime with its export cached took 1.03x PyTorch's wall time on 4 MoNuSeg tiles and 0.99x
  on the demo slide with the bundled model (CPU time 1.02x / 0.99x), 0.97x (CPU 0.99x) with
  fast mode, and 1.10-1.20x on a run that exports. Its network-only gain (1.04-1.16x per
  batch, benchmarks/bench_network.py) is spent on the runtime's start-up: a tie is not worth a
  second runtime, an export and a cache folder by default. `--backend onnxruntime` runs it.

A missing or broken `onnxruntime` (import or session creation fails) falls back to PyTorch with
one line saying so; a network the exporter cannot convert is a HoverNetError naming the layer.

Threads: ONNX Runtime's intra-op pool gets `threads` or `available_cpus()` (affinity mask and
cgroup quota, not `os.cpu_count()`), one inter-op thread, and no spin-waiting, so idle runtime
threads give the cores straight back to the post-processing worker processes.
"""

from __future__ import annotations

import importlib.util
import time
import weakref
from collections.abc import Callable

import numpy as np
import torch

from hovernet.device import autocast_dtype, model_device
from hovernet.errors import HoverNetError
from hovernet.model.inference import logits_to_maps
from hovernet.model.onnx_cache import cached_export
from hovernet.model.onnx_export import INPUT_NAME, output_names
from hovernet.resources import available_cpus

BACKENDS = ("auto", "torch", "onnxruntime")
# model -> its backend (absent: PyTorch); weak keys, so the table never keeps a model alive
_CHOSEN: weakref.WeakKeyDictionary[torch.nn.Module, OnnxRuntimeBackend] = (
    weakref.WeakKeyDictionary()
)


def _fingerprint(model: torch.nn.Module) -> tuple:
    """Changes when any weight or buffer is replaced or modified in place (optimizer step)."""
    return tuple((t.data_ptr(), t._version) for t in model.state_dict().values())


def _import_onnxruntime():
    # the exporter needs onnx; importing it costs ~1.4 s, so only check that it is there
    if importlib.util.find_spec("onnx") is None:
        raise ModuleNotFoundError("No module named 'onnx'")
    import onnxruntime

    return onnxruntime


class OnnxRuntimeBackend:
    """The model exported to ONNX (or read from the export cache), run by ONNX Runtime on the
    CPU in float32."""

    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module, threads: int | None = None, ort=None):
        self.ort = ort if ort is not None else _import_onnxruntime()
        self.model = model
        self.threads = threads or available_cpus()
        self.input_name = INPUT_NAME
        self.outputs = output_names(model)
        onnx_bytes, self.export_s, self.from_cache = cached_export(model)
        self.fingerprint = _fingerprint(model)
        start = time.perf_counter()
        self.session = self._session(onnx_bytes)  # the session keeps its own copy
        self.session_s = time.perf_counter() - start

    def _session(self, onnx_bytes: bytes):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        # no busy-waiting between ops: post-processing workers get the cores meanwhile
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def describe(self) -> str:
        how = "read from the cache" if self.from_cache else "exported"
        return (
            f"ONNX Runtime {self.ort.__version__} (CPU, {self.threads} threads; "
            f"{how} in {self.export_s:.1f} s)"
        )

    def run(self, patches: np.ndarray) -> np.ndarray:
        """N x S x S x 3 uint8 windows -> N x s x s x (3 + C) float32 [np prob, h, v, softmax]."""
        if _fingerprint(self.model) != self.fingerprint:
            raise HoverNetError(
                "the model's weights changed after its ONNX Runtime backend was built: call "
                "hovernet.infer.backends.use_backend(model) again to re-export it"
            )
        x = np.ascontiguousarray(patches.transpose(0, 3, 1, 2), dtype=np.float32)
        logits = self.session.run(self.outputs, {self.input_name: x})
        out = {name: torch.from_numpy(a) for name, a in zip(self.outputs, logits, strict=True)}
        return logits_to_maps(out).numpy()


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype | None) -> str:
    """ "auto" -> torch (measured: see the module's docstring); checks explicit choices."""
    if name not in BACKENDS:
        raise HoverNetError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "torch"
    if name == "onnxruntime" and device.type != "cpu":
        raise HoverNetError(
            f"the onnxruntime backend runs on the CPU, but the model is on {device}: "
            "use --device cpu, or --backend torch (or auto) for the GPU"
        )
    if name == "onnxruntime" and dtype is not None:
        raise HoverNetError(
            f"the onnxruntime backend runs in float32, but --precision asks for "
            f"{str(dtype).removeprefix('torch.')}: use --precision fp32 (or auto), or "
            "--backend torch"
        )
    return name


def use_backend(
    model: torch.nn.Module,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Choose the backend that runs `model` in the engine; returns the name in use.

    Call it after the weights are final (load, `prepare_for_inference`): the ONNX Runtime
    backend holds an exported copy and refuses to run once the weights change. Calling it again
    with the same choice reuses the attached backend while the weights are unchanged.
    """
    device = model_device(model)
    # asked for ONNX Runtime by name, "auto" precision means its fp32
    auto_fp32 = backend == "onnxruntime" and precision == "auto"
    name = resolve_backend(
        backend, device, None if auto_fp32 else autocast_dtype(device, precision)
    )
    current = _CHOSEN.get(model)
    if name == "torch":
        _CHOSEN.pop(model, None)
        return "torch"
    wanted = threads or available_cpus()
    if (
        isinstance(current, OnnxRuntimeBackend)
        and current.threads == wanted
        and current.fingerprint == _fingerprint(model)
    ):
        return current.name
    try:
        ort = _import_onnxruntime()
    except Exception as exc:  # missing, or a broken install (ImportError, OSError, ...)
        log(_fallback_line(exc))
        _CHOSEN.pop(model, None)
        return "torch"
    try:
        built = OnnxRuntimeBackend(model, wanted, ort)
    except HoverNetError:
        raise  # export failure: names the layer, no silent fallback
    except Exception as exc:  # the runtime itself failed to load the exported model
        log(_fallback_line(exc))
        _CHOSEN.pop(model, None)
        return "torch"
    _CHOSEN[model] = built
    return built.name


def _fallback_line(exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"onnxruntime is not usable here ({type(exc).__name__}: {reason}); running the network "
        "with PyTorch instead (pip install onnxruntime onnx, or drop --backend onnxruntime)"
    )


def backend_of(model: torch.nn.Module) -> OnnxRuntimeBackend | None:
    """The backend chosen for `model` (None: PyTorch)."""
    return _CHOSEN.get(model)


def effective_precision(model: torch.nn.Module, precision: str) -> str:
    """The precision `model` runs at in the engine: fp32 through ONNX Runtime, else the
    autocast dtype `precision` gives on its device ("fp32", "bf16", "fp16")."""
    if backend_of(model) is not None:
        return "fp32"
    dtype = autocast_dtype(model_device(model), precision)
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")
