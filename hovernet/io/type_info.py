"""type_info: class ids, names and colours in the original HoVer-Net's JSON format.

    {"0": ["background", [0, 0, 0]], "1": ["tumour", [255, 255, 0]], "2": ["immune", [255, 0, 0]]}

In memory it is `{id: (name, (r, g, b))}` sorted by id. The one parser and the one file reader
for every command (extract-patches, infer, convert-checkpoint, view-dataset, checkpoints).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hovernet.errors import HoverNetError

TypeInfo = dict[int, tuple[str, tuple[int, int, int]]]

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


def load_type_info(path: str | os.PathLike) -> TypeInfo:
    """Read a type_info.json file; every problem is a HoverNetError naming the file."""
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
    return parse_type_info(raw, str(path))


def type_info_json(type_info: TypeInfo) -> str:
    """The original's type_info.json text."""
    return json.dumps({str(k): [n, list(c)] for k, (n, c) in sorted(type_info.items())}, indent=1)
