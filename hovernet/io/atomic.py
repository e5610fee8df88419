"""Atomic file writes: write to a temporary name beside the target, then rename.

A crash or Ctrl-C never leaves a half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to `path` on success.

    The temporary name keeps the target's suffix, so writers that choose the format from the
    extension (OpenCV, tifffile, numpy) still work. On error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file owner-only (0600); give the result the permissions a plain
        # open() would, so colleagues on a shared server can read the outputs.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> bool:
    """Make sure files can be created in `folder` (created if missing) before any work starts.

    Returns True when this call created the folder (so a run that writes nothing can remove it
    again). Raises HoverNetError naming the folder and the reason (a path under a file, no
    permission, a read-only file system, a full disk).
    """
    from hovernet.errors import HoverNetError

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".hovernet-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HoverNetError(
            f"cannot write to the {what} {folder}: {reason}; choose a folder you can write to"
        ) from None
    return created


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> None:
    """Check that `path` can be written (its folder exists or can be made, and takes files)."""
    from hovernet.errors import HoverNetError

    path = Path(path)
    if path.is_dir():
        raise HoverNetError(f"the {what} {path} is a folder: give a file name")
    check_writable_dir(path.parent, f"folder of the {what}")


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Delete leftover temporary files of `atomic_path` under `folder` (after an interrupt);
    returns how many were removed."""
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    for tmp in root.rglob(".*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_empty_dirs(folder: str | os.PathLike) -> None:
    """Remove `folder` and its sub-folders if they hold no files (a run that wrote nothing)."""
    root = Path(folder)
    if not root.is_dir():
        return
    for sub in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()
