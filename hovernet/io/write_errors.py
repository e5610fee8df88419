"""Failures to write outputs that no retry fixes (a full disk, a read-only or forbidden
folder), told as one line that names the output folder, what is wrong and the fix."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

FATAL_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}
_FULL = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL, _SQLITE_READONLY = 13, 8  # SQLite's primary result codes


def _errno_of(exc: BaseException, folder: Path) -> int | None:
    """The errno of `exc` when it is a failure to write into `folder`, else None."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        primary = code & 0xFF
        if primary == _SQLITE_FULL:
            return errno.ENOSPC
        return errno.EROFS if primary == _SQLITE_READONLY else None
    if not isinstance(exc, OSError) or exc.errno not in FATAL_ERRNOS:
        return None
    if exc.filename is not None:
        target = Path(os.fsdecode(exc.filename)).resolve()
        if not target.is_relative_to(Path(folder).resolve()):
            return None  # an input or another file: not the outputs'
    elif exc.errno in (errno.EACCES, errno.EPERM):
        return None  # a forbidden file that it does not name may be an input
    return exc.errno


def write_failure(exc: BaseException, folder: Path, resume: str) -> str | None:
    """The message for `exc` if it is a failure to write into the output `folder` that stops
    the run (see the module docstring), else None. `resume` says what a rerun keeps."""
    code = _errno_of(exc, folder)
    if code is None:
        return None
    if code in _FULL:
        what = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
        fix = f"free space on the disk of {folder} or pass another --output_dir"
    else:
        what = "it is read-only" if code == errno.EROFS else "permission denied"
        fix = "pass an --output_dir you can write to"
    detail = getattr(exc, "strerror", None) or str(exc)
    return f"cannot write to {folder}: {what} ({detail}): {fix}; then {resume}"
