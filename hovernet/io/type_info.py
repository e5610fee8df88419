"""type_info: class ids, names and colours in the original HoVer-Net's JSON format.

    {"0": ["background", [0, 0, 0]], "1": ["tumour", [255, 255, 0]], "2": ["immune", [255, 0, 0]]}

In memory it is `{id: (name, (r, g, b))}` sorted by id. The one parser, the one file reader
and the one set of checks for every command (extract-patches, infer, convert-checkpoint,
export-onnx, view-dataset, checkpoints): class ids 0..254, one colour per class, class 0
(background) added as black when the file leaves it out, and, given a model's number of types,
ids exactly 1..nr_types-1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hovernet.errors import HoverNetError

TypeInfo = dict[int, tuple[str, tuple[int, int, int]]]

BACKGROUND = ("background", (0, 0, 0))
UNCHECKED = object()  # `load_type_info(path)`: no model to check the ids against
FORMAT_HINT = '{"0": ["background", [0, 0, 0]], "1": ["name", [r, g, b]], ...}'


def parse_type_info(raw: dict | None, source: str = "type_info") -> TypeInfo | None:
    """`{id: (name, (r, g, b))}` from the JSON form (string ids, lists) or the in-memory form."""
    if raw is None:
        return None
    out: TypeInfo = {}
    try:
        for key, (name, colour) in raw.items():
            rgb = tuple(int(c) for c in colour)
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"colour {colour!r} is not three values in 0..255")
            out[int(key)] = (str(name), rgb)
    except (AttributeError, TypeError, ValueError) as exc:
        raise HoverNetError(
            f"{source}: type info must map type ids to [name, [r, g, b]] ({exc}); "
            f"expected {FORMAT_HINT}"
        ) from None
    return dict(sorted(out.items()))


def load_type_info(path: str | os.PathLike, nr_types: int | None | object = UNCHECKED) -> TypeInfo:
    """Read and check a type_info.json file; every problem is a HoverNetError naming the file.

    Checks: class ids 0..254, no two classes with one colour (colour masks are decoded by
    colour); class 0 is added as black "background" when absent. `nr_types` (the model's type
    channels, None for an untyped model) also checks the ids against the model
    (`check_type_info`)."""
    path = Path(path)
    if not path.is_file():
        raise HoverNetError(f"type info file {path} does not exist: check the path")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HoverNetError(
            f"{path} is not valid JSON ({exc}): write it as {FORMAT_HINT}"
        ) from None
    if not isinstance(raw, dict):
        raise HoverNetError(f"{path}: expected a JSON object {FORMAT_HINT}")
    info = parse_type_info(raw, str(path))
    if min(info, default=0) < 0 or max(info, default=0) > 254:
        raise HoverNetError(f"{path}: class ids must be 0..254")
    if nr_types is not UNCHECKED:
        check_type_info(info, nr_types, str(path))
    info.setdefault(0, BACKGROUND)
    info = dict(sorted(info.items()))
    colours = [c for _, c in info.values()]
    if len(set(colours)) != len(colours):
        raise HoverNetError(f"{path}: two classes share a colour; give each class its own")
    return info


def check_type_info(info: TypeInfo, nr_types: int | None, source: str) -> None:
    """Type ids must be exactly 1..nr_types-1 (0 = background optional)."""
    if nr_types is None:
        raise HoverNetError(
            f"{source} gives type names but the model has no type branch: drop "
            "--type_info_path or use a typed checkpoint"
        )
    expected = set(range(1, nr_types))
    found = set(info) - {0}
    if found != expected:
        missing = sorted(expected - found)
        extra = sorted(found - expected)
        raise HoverNetError(
            f"{source} does not match nr_types={nr_types} (ids 0..{nr_types - 1}): "
            + (f"missing ids {missing}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"ids {extra} out of range" if extra else "")
        )


def default_type_info(nr_types: int) -> TypeInfo:
    """Names "type 1".. and distinct colours (matplotlib's tab10) when none are given."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    info: TypeInfo = {0: BACKGROUND}
    for i in range(1, nr_types):
        rgba = cmap((i - 1) % 10)
        info[i] = (f"type {i}", tuple(int(round(255 * c)) for c in rgba[:3]))
    return info


def type_info_json(type_info: TypeInfo) -> str:
    """The original's type_info.json text."""
    return json.dumps({str(k): [n, list(c)] for k, (n, c) in sorted(type_info.items())}, indent=1)
