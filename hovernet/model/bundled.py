"""The model that ships inside the package: `lite` trained here on public data (see
docs/model-card.md). `hovernet.load_model()` and `hovernet infer` use it when no model is given.

Its licence follows its training data: MoNuSeg is CC BY-NC-SA 4.0, so these weights are too
(non-commercial, share-alike, attribution), and CRCHisto (whose classified nucleus centres taught
the type branch) is released for research use only, so they are for research use only; the
code of the package is MIT.
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_NAME = "lite-v3"
BUNDLED_PATH = Path(__file__).resolve().parent.parent / "weights" / f"{BUNDLED_NAME}.pth"
BUNDLED_SUMMARY = (
    f"the bundled CPU model {BUNDLED_NAME} (lite, 0.5 um/px, 4 nucleus types; trained on "
    "MoNuSeg, CoNSeP, DSB 2018 and CRCHisto's points; weights CC BY-NC-SA 4.0 and for research "
    "use only, see docs/model-card.md)"
)


def bundled_model_path() -> Path:
    """Path of the bundled checkpoint; a missing file (a broken install) is a clear error."""
    from hovernet.errors import HoverNetError

    if not BUNDLED_PATH.is_file():
        raise HoverNetError(
            f"the bundled model {BUNDLED_PATH} is missing: reinstall hovernet "
            "(pip install --force-reinstall hovernet) or pass a checkpoint with --model_path"
        )
    return BUNDLED_PATH
