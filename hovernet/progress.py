"""One progress display for every long command (inference, extraction, stats, training, slides).

    with Progress(total=len(images), desc="infer tile", unit="images") as bar:
        for image in images:
            ...
            bar.log(f"{image.name}: 123 nuclei")      # one line above the bar
            bar.advance(1, nuclei=123)                # move the bar, show the latest fields

On a terminal this is a `rich` bar on stderr with done/total, rate, elapsed time and ETA, plus
the latest fields (``nuclei=123``, ``loss=0.5``). When stderr is not a terminal (CI logs,
redirected output) there is no bar: every `log` call prints one plain line, and a short summary
line (done/total, rate, fields) is printed at most every `summary_every` seconds and once at the
end. `quiet=True` (the commands' ``--quiet``) mutes the bar and the summaries but still prints
`log` lines marked ``important=True`` (warnings the user must see).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _RichProgress
from rich.text import Text


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_fields(fields: dict[str, Any]) -> str:
    """`{"nuclei": 12, "loss": 0.51234}` -> "nuclei=12 loss=0.5123" (insertion order)."""
    return " ".join(f"{key}={_format_value(value)}" for key, value in fields.items())


class _RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one per second), with the unit."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:  # type: ignore[override]
        speed = task.finished_speed or task.speed
        if not speed:
            return Text(f"? {self.unit}/s", style="progress.data.speed")
        if speed >= 1:
            return Text(f"{speed:.1f} {self.unit}/s", style="progress.data.speed")
        return Text(
            f"{1 / speed:.1f} s/{self.unit.rstrip('s') or self.unit}", style="progress.data.speed"
        )


class Progress:
    """Progress of `total` units of work; a context manager (see the module docstring).

    total: the number of units (None or 0 when unknown: no ETA, just a count).
    desc: a short label shown before the bar and in plain summary lines.
    unit: the plural name of one unit ("images", "patches", "regions", "batches").
    quiet: mute the bar and the summaries (the commands' --quiet).
    stream: where to write (default sys.stderr); `terminal` overrides the isatty() check.
    summary_every: seconds between plain summary lines when not on a terminal (an attribute;
    set it on the instance before use to change it).
    """

    summary_every: float = 30.0

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "items",
        quiet: bool = False,
        *,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.total = total if total else None
        self.desc = desc
        self.unit = unit
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        if terminal is None:
            isatty = getattr(self.stream, "isatty", None)
            terminal = bool(isatty and isatty())
        self.terminal = terminal
        self.done = 0
        self.earlier = 0  # units an earlier run did (a resume): shown, and left out of the rate
        self.fields: dict[str, Any] = {}
        self._start = 0.0
        self._last_summary = 0.0
        self._rich: _RichProgress | None = None
        self._task = None
        self._console: Console | None = None

    # context manager --------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        self._last_summary = self._start
        if self.terminal and not self.quiet:
            self._console = Console(file=self.stream, stderr=self.stream is sys.stderr)
            self._rich = _RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(self.unit),
                _RateColumn(self.unit),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=self._console,
                transient=False,
            )
            self._rich.__enter__()
            self._task = self._rich.add_task(self.desc, total=self.total, extra="")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._rich is not None:
            self._rich.__exit__(exc_type, exc, tb)
            self._rich = None
        elif not self.quiet and exc_type is None and self.done:
            self._write(self.summary_line())

    # public API -------------------------------------------------------------------------------
    def advance(self, n: int = 1, **fields: Any) -> None:
        """Count `n` more units done; `fields` (nuclei=12, loss=0.5) replace the shown values."""
        self.done += n
        self.fields.update(fields)
        if self._rich is not None:
            self._rich.update(self._task, advance=n, extra=self._extra())
            return
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last_summary >= self.summary_every:
            self._last_summary = now
            self._write(self.summary_line())

    def resume(self, n: int) -> None:
        """Count `n` units as done by an earlier run (a resume): the count says so ("24/24
        regions (6 from the earlier run)") and the rate and ETA are this run's."""
        if n <= 0:
            return
        self.done += n
        self.earlier += n
        if self._rich is not None:
            self._rich.reset(self._task, completed=self.done, extra=self._extra())

    def _extra(self) -> str:
        note = f"({self.earlier} from the earlier run)" if self.earlier else ""
        return " ".join(part for part in (note, format_fields(self.fields)) if part)

    def log(self, line: str, *, important: bool = False) -> None:
        """Print one line above the bar (a plain line without a terminal). Muted by quiet unless
        `important` (warnings)."""
        if self.quiet and not important:
            return
        if self._rich is not None:
            self._rich.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._write(line)

    def set_total(self, total: int | None) -> None:
        """Change the total once it is known (for example after counting the patches)."""
        self.total = total if total else None
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def summary_line(self) -> str:
        """ "desc: 12/40 images, 1.5 images/s, 8.0 s, nuclei=12" — the plain-text status."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        if self.earlier:
            count += f" {self.unit} ({self.earlier} from the earlier run)"
        else:
            count += f" {self.unit}"
        now = self.done - self.earlier
        rate = now / elapsed
        rate_text = (
            f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{elapsed / max(now, 1):.1f} s each"
        )
        parts = [f"{self.desc}: {count}", rate_text, f"{elapsed:.1f} s"]
        if not now:
            parts.remove(rate_text)
        if self.fields:
            parts.append(format_fields(self.fields))
        return ", ".join(parts)

    # internals --------------------------------------------------------------------------------
    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


# ----------------------------------------------------------------------------------------------
# what to say when a command is interrupted

_status: str | None = None


def set_status(text: str | None) -> None:
    """Record what a command has finished so far and how to continue, e.g.
    "3 of 10 images finished in out/; rerun the same command to do the rest". The command line
    prints it as the one line after Ctrl-C / SIGTERM (see hovernet.cli.main)."""
    global _status
    _status = text


def current_status() -> str | None:
    return _status
