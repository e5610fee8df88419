"""HoVer-Net: nucleus instance segmentation and classification in H&E images.

The public API is imported lazily so that `import hovernet` (and `hovernet --help`) stays fast
and does not import torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "HoVerNet": "hovernet.model.network",
    "build_model": "hovernet.model.registry",
    "load_model": "hovernet.model.checkpoints",
    "save_checkpoint": "hovernet.model.checkpoints",
    "hv_targets": "hovernet.data.targets",
    "postprocess": "hovernet.infer.postprocess",
    "segment_image": "hovernet.infer.predict",
    "HoverNetError": "hovernet.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hovernet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
