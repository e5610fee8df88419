"""The one name an input's outputs take: `output_stem`.

Tile mode, slide mode, the per-slide store, the claims of a job array, the exports and the
summary all name their files after it, and the input listing refuses two inputs that share it.
"""

from __future__ import annotations

import os
from pathlib import Path

# marks of a format written before the file's suffix, dropped with it: `x.ome.tif` -> `x`
FORMAT_MARKS = (".ome",)


def output_stem(path: str | os.PathLike) -> str:
    """The file name without its suffix and without a format mark before it (`x.ome.tiff` ->
    `x`); other dots are part of the name (`case.2024.svs` -> `case.2024`)."""
    stem = Path(path).stem
    for mark in FORMAT_MARKS:
        if stem.lower().endswith(mark) and len(stem) > len(mark):
            return stem[: -len(mark)]
    return stem
