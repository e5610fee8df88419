"""A progress bar per epoch (steps, loss, ETA), quiet when asked or off the main process.

A small wrapper over `rich.progress`, kept in one function so that it can follow the project's
shared progress helper later without touching the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class _Bar:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields: float) -> None:
        if self._progress is None:
            return
        text = " ".join(f"{k} {v:.4f}" for k, v in fields.items())
        if text:
            self._progress.update(self._task, advance=n, info=text)
        else:
            self._progress.update(self._task, advance=n)


@contextlib.contextmanager
def epoch_progress(total: int, desc: str, quiet: bool = False) -> Iterator[_Bar]:
    """A bar of `total` steps; `bar.advance(n, loss=...)` moves it and shows the fields."""
    if quiet:
        yield _Bar(None, None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )
    with progress:
        task = progress.add_task(desc, total=total, info="")
        yield _Bar(progress, task)
