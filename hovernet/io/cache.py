"""Files in the user's cache folder: checked blobs, written atomically, oldest pruned.

The folder is `$HOVERNET_CACHE/<kind>` when that variable is set, else
`$XDG_CACHE_HOME/hovernet/<kind>` (`~/.cache/hovernet/<kind>`). Each file holds a header line
with the SHA-256 of its payload, so a truncated or damaged file reads as missing (and is
removed) instead of being used; files are written under a temporary name and renamed, so a
crash or two processes writing at once never leave a partial file under the final name.
Deleting the folder at any time is safe: its contents are made again when needed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hovernet.io.atomic import atomic_path

MAGIC = b"hovernet-cache 1 sha256 "


def cache_dir(kind: str) -> Path:
    """The cache folder for `kind` (e.g. "onnx"); not created here."""
    root = os.environ.get("HOVERNET_CACHE")
    if root:
        return Path(root).expanduser() / kind
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hovernet" / kind


def read_blob(path: Path) -> bytes | None:
    """The payload stored at `path`; None if missing, unreadable, truncated or damaged (a
    damaged file is removed). A hit refreshes the file's time, so pruning keeps it."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header, sep, payload = data.partition(b"\n")
    digest = header.removeprefix(MAGIC).decode("ascii", errors="replace")
    if not (sep and header.startswith(MAGIC)) or hashlib.sha256(payload).hexdigest() != digest:
        path.unlink(missing_ok=True)
        return None
    try:
        os.utime(path)
    except OSError:
        pass
    return payload


def write_blob(path: Path, payload: bytes, keep: int = 8) -> None:
    """Store `payload` at `path` atomically, then remove all but the `keep` most recently used
    files with its suffix in its folder. Raises OSError when the folder is not writable."""
    header = MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(payload)
    entries = []
    for other in path.parent.glob(f"*{path.suffix}"):
        if not other.name.startswith("."):  # atomic_path's temporary files of other writers
            try:
                entries.append((other.stat().st_mtime, other))
            except OSError:
                continue
    for _, old in sorted(entries, reverse=True)[keep:]:
        old.unlink(missing_ok=True)
