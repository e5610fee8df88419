"""The per-slide lock file of slide mode: one process at a time works on a slide's outputs."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from hovernet.errors import HoverNetError


@contextlib.contextmanager
def slide_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `<slide>.lock` (released by the OS even on SIGKILL), removed when
    the slide's run ends (while still held, so no other process can take the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HoverNetError(
                f"{path.with_suffix('')} is being processed by another process (lock {path}); "
                "wait for it or give each process its own slides (--shard, torchrun)"
            ) from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)
