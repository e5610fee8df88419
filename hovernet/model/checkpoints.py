"""Reading and writing HoVer-Net checkpoints.

Two formats load:

- the original project's: `torch.save({"desc": state_dict})`, keys possibly prefixed `module.`
  (saved from `DataParallel`) and possibly without `num_batches_tracked`. Mode and number of
  types are not recorded; they are read off the weights' shapes (decoder kernels 5x5 =
  `original`, 3x3 = `fast`; output channels of `decoder.tp.u0.conv` = number of types).
- this project's: the same `"desc"` state dict (so the original code can load it too) plus
  `"hovernet_format"`, `"mode"` (the architecture's name in hovernet.model.registry:
  `original`, `fast`, `lite`), `"nr_types"`, `"type_info"` and `"mpp"`, so inference needs
  no extra flags.

Every architecture is built through `hovernet.model.registry.build_model`; which one a file
holds is read off its keys and shapes (each registry entry recognises its own state dicts) and
checked against the recorded mode.

Files are always read with `torch.load(weights_only=True)`: nothing but tensors and plain
containers is ever unpickled.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hovernet.config import MODES
from hovernet.errors import HoverNetError
from hovernet.io.atomic import atomic_path
from hovernet.io.type_info import TypeInfo, parse_type_info
from hovernet.model.lite import SIGNATURE_KEY as LITE_KEY
from hovernet.model.registry import HOVERNET_KERNEL_KEY, build_model, get_architecture, recognise

FORMAT_NAME = "hovernet-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelMeta:
    """What a model was trained as: everything inference needs besides the weights."""

    mode: str
    nr_types: int | None
    type_info: TypeInfo | None = None  # {type id: (name, (r, g, b))}, 0 = background
    mpp: float | None = None  # microns per pixel of the training images


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise HoverNetError(f"checkpoint {path} does not exist: check the path")
    if path.suffix == ".npz":
        raise HoverNetError(
            f"{path} is a TensorFlow/numpy checkpoint: convert it first with "
            f"`hovernet convert-checkpoint {path} {path.with_suffix('.pth')}`"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests loading with weights_only=False: never do that here
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None and "global" not in str(exc).lower():  # bytes that are no pickle
            raise HoverNetError(
                f"{path} is not a PyTorch checkpoint (its bytes are no saved tensors): pass a "
                "file written by torch.save, e.g. the original's hovernet_*_pytorch.tar"
            ) from None
        what = f" (it needs {found.group(1)})" if found else ""
        raise HoverNetError(
            f"{path} was refused: besides tensors it contains Python code or objects{what}, "
            "which are never loaded because loading them could run that code. Re-save the "
            'weights only, where the file comes from: torch.save({"desc": '
            "model.state_dict()}, path)"
        ) from None
    except Exception as exc:  # torch raises many types for non-checkpoint bytes
        raise HoverNetError(
            f"{path} is not a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}): pass a file written by "
            "torch.save, e.g. the original's hovernet_*_pytorch.tar"
        ) from None
    if not isinstance(obj, dict):
        raise HoverNetError(
            f"{path} is not a HoVer-Net checkpoint: it holds a {type(obj).__name__}"
        )
    return obj


def _state_dict_of(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file, without any `module.` prefix."""
    sd = obj.get("desc", obj)
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise HoverNetError(
            f"{path} is not a HoVer-Net checkpoint: expected a state dict under the key 'desc', "
            f"found keys {sorted(map(str, obj))[:5]}"
        )
    return {k.removeprefix("module."): v for k, v in sd.items()}


def infer_architecture(
    sd: dict[str, torch.Tensor], source: str = "checkpoint"
) -> tuple[str, int | None]:
    """(mode, nr_types) from the keys and shapes of a state dict (registry recognisers)."""
    found = recognise(sd)
    if found is not None:
        return found[0].name, found[1]
    kernel = sd.get(HOVERNET_KERNEL_KEY)
    if kernel is not None and kernel.ndim == 4:
        raise HoverNetError(
            f"{source}: decoder kernels are {kernel.shape[-1]}x{kernel.shape[-1]}, "
            "but HoVer-Net uses 5x5 (original mode) or 3x3 (fast mode)"
        )
    hint = ""
    if "d0.units.0.conv1.weight" in sd or "conv1.weight" in sd:
        hint = " (it looks like encoder-only weights: load those with load_encoder_weights)"
    raise HoverNetError(
        f"{source} is not a HoVer-Net checkpoint: it has no {HOVERNET_KERNEL_KEY} "
        f"(original/fast) nor {LITE_KEY} (lite){hint}"
    )


def _check_requested(source: str, found: tuple, mode: str | None, nr_types: int | None) -> None:
    found_mode, found_types = found
    if mode is not None and mode != found_mode:
        get_architecture(mode)  # unknown names: HoverNetError listing the known ones
        article = "an" if found_mode[0] in "aeiou" else "a"
        raise HoverNetError(
            f"{source}: {get_architecture(found_mode).signature}: this is {article} "
            f"{found_mode}-mode checkpoint, use --model_mode {found_mode}"
        )
    if nr_types is None or nr_types == found_types:
        return
    if nr_types == 0 and found_types is None:
        return
    if found_types is None:
        raise HoverNetError(
            f"{source}: checkpoint has no type branch but --nr_types is {nr_types}: "
            "leave --nr_types out or use a typed checkpoint"
        )
    raise HoverNetError(
        f"{source}: checkpoint has {found_types} type channels but --nr_types is {nr_types}"
    )


def _meta_of(obj: dict, found: tuple, path: Path) -> ModelMeta:
    mode, nr_types = found
    if "hovernet_format" not in obj:
        return ModelMeta(mode, nr_types)
    if obj["hovernet_format"] != FORMAT_NAME or obj.get("format_version", 0) > FORMAT_VERSION:
        raise HoverNetError(
            f"{path} was written by a newer hovernet (format {obj['hovernet_format']!r} "
            f"version {obj.get('format_version')}): upgrade hovernet"
        )
    if obj.get("mode") not in (mode, None) and obj.get("mode") not in MODES:
        raise HoverNetError(
            f"{path} is a {obj.get('mode')!r} checkpoint, an architecture this hovernet does "
            f"not know ({', '.join(MODES)}): upgrade hovernet"
        )
    if obj.get("mode") != mode or obj.get("nr_types") != nr_types:
        raise HoverNetError(
            f"{path}: recorded mode/nr_types ({obj.get('mode')}, {obj.get('nr_types')}) do not "
            f"match its weights ({mode}, {nr_types}): the file is corrupt, re-save it"
        )
    mpp = obj.get("mpp")
    type_info = parse_type_info(obj.get("type_info"), str(path))
    return ModelMeta(mode, nr_types, type_info, None if mpp is None else float(mpp))


def load_state_dict_into(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load an original-layout state dict; fills in missing `num_batches_tracked`.

    The tensors are assigned, not copied, so `model` may be built on the meta device (no time
    spent on random initialisation).
    """
    own = model.state_dict()
    sd = dict(sd)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in sd:
            sd[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
        for k, v in own.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing weights, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights, e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} wrongly shaped weights, e.g. {', '.join(wrong[:3])}")
    if problems:
        raise HoverNetError(
            f"{source} does not fit HoVer-Net ({model.mode} mode, nr_types={model.nr_types}): "
            + "; ".join(problems)
        )
    model.load_state_dict(sd, strict=True, assign=True)


def load_model(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    mode: str | None = None,
    nr_types: int | None = None,
) -> nn.Module:
    """Load a checkpoint (original or own format) into its architecture, eval mode, on `device`.

    `mode` and `nr_types` are read from the file; pass them only to check (a mismatch raises
    HoverNetError naming it). `nr_types=0` asks for a model without type branch. The result has
    `model.meta`: a ModelMeta with mode, nr_types, type_info and mpp (None where unknown).
    Without `path`, the model bundled with the package (`hovernet.model.bundled`), saying so in
    one line on stderr.
    """
    if path is None:
        import sys

        from hovernet.model.bundled import BUNDLED_SUMMARY, bundled_model_path

        path = bundled_model_path()
        print(f"using {BUNDLED_SUMMARY}", file=sys.stderr, flush=True)
    path = Path(path)
    obj = _read_file(path)
    sd = _state_dict_of(obj, path)
    found = infer_architecture(sd, str(path))
    _check_requested(str(path), found, mode, nr_types)
    meta = _meta_of(obj, found, path)
    with torch.device("meta"):  # weights come from the file: skip random initialisation
        model = build_model(*found)
    load_state_dict_into(model, sd, str(path))
    model.meta = meta
    return model.to(device).eval()


def model_description(
    model: nn.Module, type_info: dict | None = None, mpp: float | None = None
) -> dict:
    """What a saved model records besides its weights (checkpoints and exported ONNX files):
    mode, nr_types, type_info as `{"id": [name, [r, g, b]]}` and mpp, checked against `model`."""
    info = parse_type_info(type_info)
    if info is not None:
        if model.nr_types is None:
            raise HoverNetError("type_info given for a model without type branch (nr_types=None)")
        bad = [i for i in info if not 0 <= i < model.nr_types]
        if bad:
            raise HoverNetError(
                f"type_info has type ids {bad} outside 0..{model.nr_types - 1} "
                f"(the model has {model.nr_types} type channels)"
            )
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise HoverNetError(f"mpp must be a positive number of microns per pixel, got {mpp!r}")
    return {
        "mode": model.mode,
        "nr_types": model.nr_types,
        "type_info": None
        if info is None
        else {str(k): [name, list(rgb)] for k, (name, rgb) in sorted(info.items())},
        "mpp": None if mpp is None else float(mpp),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    type_info: dict | None = None,
    mpp: float | None = None,
    extra: dict | None = None,
) -> None:
    """Write `model` with its mode, nr_types, type names/colours and mpp, atomically.

    `type_info` is `{id: (name, (r, g, b))}` (ids 0..nr_types-1, 0 = background) or the
    original's type_info.json form; `mpp` is the resolution the model was trained at.
    `extra` adds keys (tensors and plain containers only, e.g. the trainer's resume state);
    loaders ignore them.
    """
    if getattr(model, "prepared_for_inference", False):
        raise HoverNetError(
            "this model was prepared for inference (BatchNorm folded into the convolutions): "
            "save the model before calling prepare_for_inference"
        )
    payload = {
        "hovernet_format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **model_description(model, type_info, mpp),
        "desc": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    clash = sorted(set(extra or {}) & set(payload))
    if clash:
        raise HoverNetError(f"extra checkpoint keys {clash} would replace the model's own")
    payload.update(extra or {})
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


TYPE_BRANCH_MARK = ".tp."  # every architecture names its type branch `tp` (decoder.tp, branches.tp)


def checkpoint_architecture(path: str | os.PathLike) -> tuple[str, int | None]:
    """(mode, nr_types) of the network a checkpoint file holds; a file that is no checkpoint
    is a HoverNetError naming it."""
    path = Path(path)
    return infer_architecture(_state_dict_of(_read_file(path), path), str(path))


def init_from_checkpoint(
    model: nn.Module, path: str | os.PathLike, mpp: float | None = None
) -> str:
    """Start `model` (being trained) from the weights of a whole-model checkpoint: fine-tuning.

    The architecture must be the same. When the number of types differs, the type branch's
    weights that do not fit (its output layer; the whole branch when one side has none) keep
    their fresh initialisation and everything else is loaded. `mpp` (the training data's
    resolution) adds a note to the returned one-line summary when the checkpoint's differs.
    """
    path = Path(path)
    obj = _read_file(path)
    sd = _state_dict_of(obj, path)
    mode, nr_types = infer_architecture(sd, str(path))
    if mode != model.mode:
        grow = (
            f" (or grow it into {model.mode} first: scripts/bundled_model/grow.py)"
            if mode == "lite" and model.mode in ("lite-wide", "lite-deep")
            else ""
        )
        raise HoverNetError(
            f"{path} holds a {mode} network but this run trains {model.mode}: pass --arch {mode} "
            f"or another checkpoint{grow}"
        )
    note = ""
    trained_mpp = obj.get("mpp")
    if mpp is not None and trained_mpp is not None and abs(trained_mpp - mpp) > 0.01 * mpp:
        note = (
            f"; note: it was trained at {trained_mpp} um/px and this data is at {mpp} um/px "
            "(resample the images to match)"
        )
    if nr_types == model.nr_types:
        load_state_dict_into(model, sd, str(path))
        return f"all weights from {path}{note}"
    own = model.state_dict()
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    left = [k for k in own if k not in fits and not k.endswith("num_batches_tracked")]
    dropped = [k for k in sd if k not in fits]
    outside = [k for k in [*left, *dropped] if TYPE_BRANCH_MARK not in f".{k}"]
    if outside:
        raise HoverNetError(
            f"{path} does not fit the {model.mode} network beyond its type branch, e.g. "
            f"{', '.join(outside[:3])}: the file is not a {model.mode} checkpoint"
        )
    model.load_state_dict(fits, strict=False)
    return (
        f"weights from {path} except {len(left)} tensor(s) of the type branch, initialised afresh "
        f"(the checkpoint has nr_types={nr_types}, this data {model.nr_types}){note}"
    )
