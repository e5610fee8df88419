"""Convert the original TensorFlow (tensorpack) HoVer-Net checkpoints (`.npz`) to PyTorch.

The TF variable of each state-dict entry follows from its name (`tf_name`), e.g.
`d0.units.1.preact/bn.weight` <- `group0/block1/preact/bn/gamma:0`,
`decoder.np.u3.dense.units.0.conv2.weight` <- `np/u3/dense/blk/0/conv2/W:0`,
`decoder.tp.u0.conv.bias` <- `conv_out_tp/b:0`. Conv kernels are stored HWIO in TF and OIHW in
PyTorch (transpose [3, 2, 0, 1]); BN `gamma`/`beta`/`mean/EMA`/`variance/EMA` become
`weight`/`bias`/`running_mean`/`running_var`; `num_batches_tracked` is 0 and
`upsample2x.unpool_mat` is ones(2, 2), neither stored in TF.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from hovernet.errors import HoverNetError
from hovernet.model.checkpoints import load_state_dict_into, save_checkpoint
from hovernet.model.network import HoVerNet

_BN_PARAM = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "mean/EMA",
    "running_var": "variance/EMA",
}
_CONV_PARAM = {"weight": "W", "bias": "b"}
# (PyTorch module path pattern, TF scope); applied in order, first match wins
_MODULE_RULES = [
    (r"^conv0\./$", "conv0"),
    (r"^conv0\.bn$", "conv0/bn"),
    (r"^d(\d)\.units\.(\d+)\.(.+)$", r"group\1/block\2/\3"),
    (r"^d(\d)\.shortcut$", r"group\1/block0/convshortcut"),
    (r"^d(\d)\.blk_bna\.bn$", r"group\1/bnlast/bn"),
    (r"^decoder\.(\w+)\.u0\.bn$", r"preact_out_\1/bn"),
    (r"^decoder\.(\w+)\.u0\.conv$", r"conv_out_\1"),
    (r"^decoder\.(\w+)\.(u\d)\.dense\.units\.(\d+)\.(.+)$", r"\1/\2/dense/blk/\3/\4"),
    (r"^decoder\.(\w+)\.(u\d)\.dense\.blk_bna\.bn$", r"\1/\2/dense/blk_bna/bn"),
    (r"^decoder\.(\w+)\.(u\d)\.(conva|convf)$", r"\1/\2/\3"),
    (r"^conv_bot$", "conv_bot"),
]


def tf_name(key: str) -> str | None:
    """The TF variable name (with ':0') for a state-dict key; None if TF does not store it."""
    if key.endswith(("num_batches_tracked", "unpool_mat")):
        return None
    module, param = key.rsplit(".", 1)
    for pattern, scope in _MODULE_RULES:
        if re.match(pattern, module):
            scope = re.sub(pattern, scope, module)
            names = _BN_PARAM if module.endswith("bn") else _CONV_PARAM
            return f"{scope}/{names[param]}:0"
    raise KeyError(f"no TensorFlow name rule for {key!r}")


def _architecture(arrays: Mapping[str, np.ndarray], source: str) -> tuple[str, int | None]:
    kernel = arrays.get("np/u3/conva/W:0")
    if kernel is None or kernel.ndim != 4 or kernel.shape[0] not in (3, 5):
        raise HoverNetError(
            f"{source} is not a HoVer-Net TensorFlow checkpoint: it has no 3x3 or 5x5 "
            "np/u3/conva/W variable"
        )
    mode = "original" if kernel.shape[0] == 5 else "fast"
    tp = arrays.get("conv_out_tp/W:0")
    return mode, None if tp is None else int(tp.shape[-1])


def convert_tf_arrays(
    arrays: Mapping[str, np.ndarray], source: str = "checkpoint"
) -> tuple[HoVerNet, list[str]]:
    """A HoVer-Net loaded from `{TF name: array}`, and the TF names that were not used."""
    arrays = {(k if k.endswith(":0") else k + ":0"): v for k, v in arrays.items()}
    with torch.device("meta"):  # weights come from the file: skip random initialisation
        model = HoVerNet(*_architecture(arrays, source))
    own = model.state_dict()
    sd, missing = {}, []
    for key, ref in own.items():
        name = tf_name(key)
        if name is None:
            sd[key] = (
                torch.ones(2, 2) if key.endswith("unpool_mat") else torch.zeros((), dtype=ref.dtype)
            )
            continue
        if name not in arrays:
            missing.append(name)
            continue
        value = np.asarray(arrays[name], dtype=np.float32)
        if value.ndim == 4:  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        sd[key] = torch.from_numpy(np.ascontiguousarray(value))
    if missing:
        raise HoverNetError(
            f"{source} lacks {len(missing)} HoVer-Net variables, e.g. {', '.join(missing[:3])}: "
            "is it a HoVer-Net checkpoint of the original TensorFlow code?"
        )
    load_state_dict_into(model, sd, source)
    used = {tf_name(k) for k in own}
    return model, sorted(k for k in arrays if k not in used)


def convert_npz(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    type_info: dict | None = None,
    mpp: float | None = None,
) -> tuple[HoVerNet, list[str]]:
    """Convert TF checkpoint `src` (.npz) to this project's checkpoint `dst` (atomic write)."""
    src = Path(src)
    if not src.is_file():
        raise HoverNetError(f"TensorFlow checkpoint {src} does not exist: check the path")
    try:
        with np.load(src, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise HoverNetError(
            f"{src} is not a readable .npz file ({str(exc).splitlines()[0]}): pass the "
            "original TensorFlow checkpoint saved as .npz"
        ) from None
    model, unused = convert_tf_arrays(arrays, str(src))
    save_checkpoint(dst, model, type_info=type_info, mpp=mpp)
    return model, unused
