"""The cohort table's files: `<output_dir>/cohort.csv`, one row per finished slide.

A slide is finished when its `<slide>.summary.json` exists (slide mode writes it last); its row
comes from that summary and its `<slide>.csv` (`hovernet.metrics.cohort_table.slide_row`).

`update_cohort_table(out_dir, fresh)` runs under an exclusive lock on `<output_dir>/.cohort.lock`
(`flock`, released by the OS on any exit), so processes and ranks that finish slides at the same
time take turns: each lists the finished slides, keeps the rows the table already has for them
(except those named in `fresh`, recomputed), computes the missing ones and writes the table under
a temporary name renamed into place. A row is never lost: whichever process writes last sees
every summary written before it took the lock. `fresh=None` rebuilds every row
(`hovernet cohort`).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.atomic import atomic_path
from hovernet.metrics.cohort_table import slide_row

COHORT_CSV = "cohort.csv"
LOCK = ".cohort.lock"
SUMMARY = ".summary.json"
# the slide CSV's columns that are not measurements of a nucleus
NOT_FEATURES = {"id", "type", "type_name", "type_prob", "centroid_x", "centroid_y"}
NOT_FEATURE_PREFIXES = ("bbox_", "prob_")
CHUNK = 65536  # CSV rows parsed at a time (bounded memory)


def finished_slides(out_dir: Path) -> dict[str, Path]:
    """Slide name -> its summary, for every finished slide in `out_dir`, sorted by name."""
    found = {p.name[: -len(SUMMARY)]: p for p in Path(out_dir).glob(f"*{SUMMARY}")}
    return {name: found[name] for name in sorted(found) if name}


def redo_hint(out_dir: Path) -> str:
    return (
        f"rerun that slide with `hovernet infer wsi --overwrite --output_dir {out_dir}` (or "
        "move its files out of the folder), then run `hovernet cohort` on the folder"
    )


def read_summary(path: Path) -> dict[str, Any]:
    """A slide's summary; HoverNetError naming the file when it is not one."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise HoverNetError(
            f"cannot read the summary {path}: {reason}; {redo_hint(path.parent)}"
        ) from None
    if not isinstance(summary, dict) or not isinstance(summary.get("nuclei"), int):
        raise HoverNetError(
            f"{path} is not a slide-mode summary (no nuclei count); {redo_hint(path.parent)}"
        )
    return summary


def is_feature(column: str) -> bool:
    """Whether a slide CSV column measures a nucleus (not its id, class, position or box)."""
    return column not in NOT_FEATURES and not column.startswith(NOT_FEATURE_PREFIXES)


def read_nuclei(path: Path) -> tuple[Sequence[str], dict[str, np.ndarray]]:
    """Each nucleus' `type_name` and its numeric measurement columns (empty cells: NaN; a
    column with text in it is left out) from a slide CSV."""
    with open(path, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh), None)
    if not header or "type_name" not in header:
        raise HoverNetError(
            f"{path} is not a slide-mode CSV (no type_name column); {redo_hint(path.parent)}"
        )
    t = header.index("type_name")
    wanted = {i: c for i, c in enumerate(header) if is_feature(c)}
    return _read_numbers(path, t, wanted) or _read_cells(path, header, t, wanted)


def _read_numbers(path: Path, t: int, wanted: dict[int, str]):
    """numpy's C reader, chunk by chunk, empty cells read as NaN (the usual CSV: 2-4 times
    quicker than `_read_cells`); None when a measurement column holds text or a row is short."""
    options = dict(delimiter=",", quotechar='"', comments=None, ndmin=2)
    names, parts = [], []
    try:
        with open(path, encoding="utf-8") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's "input contained no data"
            next(fh)
            while lines := list(islice(fh, CHUNK)):
                block = "".join(lines)
                names.append(np.loadtxt(io.StringIO(block), str, usecols=[t], **options)[:, 0])
                if wanted:
                    empty = block.replace(",,", ",nan,").replace(",,", ",nan,")
                    filled = io.StringIO(empty.replace(",\n", ",nan\n"))
                    parts.append(np.loadtxt(filled, np.float64, usecols=list(wanted), **options))
    except ValueError:
        return None
    if not names:
        return [], {c: np.zeros(0) for c in wanted.values()}
    values = np.concatenate(parts) if parts else np.zeros((0, 0))
    return np.concatenate(names), {c: values[:, k] for k, c in enumerate(wanted.values())}


def _read_cells(path: Path, header: list[str], t: int, wanted: dict[int, str]):
    """The CSV cell by cell: empty cells, text columns, rows of the wrong length."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        names: list[str] = []
        parts: dict[int, list[np.ndarray]] = {i: [] for i in wanted}
        while rows := list(islice(reader, CHUNK)):
            if any(len(r) != len(header) for r in rows):
                raise HoverNetError(
                    f"{path} has rows of another length than its header (cut short?); "
                    f"{redo_hint(path.parent)}"
                )
            columns = list(zip(*rows, strict=True))
            names.extend(columns[t])
            for i in list(parts):
                numbers = _floats(columns[i])
                if numbers is None:
                    del parts[i]  # text: not a measurement
                else:
                    parts[i].append(numbers)
    features = {
        wanted[i]: np.concatenate(chunks) if chunks else np.zeros(0) for i, chunks in parts.items()
    }
    return names, features


def _floats(cells: tuple[str, ...]) -> np.ndarray | None:
    """The cells as numbers (empty: NaN); None when one is text."""
    try:
        return np.fromiter(map(float, cells), np.float64, len(cells))
    except ValueError:
        pass
    try:
        return np.fromiter((float(c) if c else math.nan for c in cells), np.float64, len(cells))
    except ValueError:
        return None


def format_value(value: Any) -> str:
    """A cell: "" for None and non-finite numbers, numbers in full (repr) precision."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def read_table(path: Path) -> list[dict[str, str]]:
    """The rows of an existing cohort.csv ([] when missing or not a cohort table)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or reader.fieldnames[0] != "slide":
                return []
            return [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def write_table(path: Path, rows: list[dict[str, str]]) -> None:
    """The rows as CSV (columns in the order first seen), written atomically."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def table_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive lock on `<out_dir>/.cohort.lock` (waits for the holder; the file is kept)."""
    with open(Path(out_dir) / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def slide_table_row(out_dir: Path, name: str, summary_path: Path) -> dict[str, str] | None:
    """The formatted row of one finished slide; None when its outputs vanished meanwhile (an
    --overwrite rerun removing them)."""
    csv_path = out_dir / f"{name}.csv"
    try:
        summary = read_summary(summary_path)
        if not csv_path.is_file():
            raise HoverNetError(
                f"{csv_path} is missing (the slide's nuclei for {summary_path}); "
                f"{redo_hint(out_dir)}"
            )
        types, features = read_nuclei(csv_path)
    except (HoverNetError, OSError):
        if not summary_path.exists():
            return None
        raise
    try:
        row = slide_row(name, summary, types, features)
    except ValueError as exc:
        raise HoverNetError(
            f"{csv_path} does not match {summary_path} ({exc}); {redo_hint(out_dir)}"
        ) from None
    return {k: format_value(v) for k, v in row.items()}


def update_cohort_table(out_dir: str | os.PathLike, fresh: Iterable[str] | None = None) -> int:
    """Bring `<out_dir>/cohort.csv` up to date with the finished slides (see the module
    docstring); returns its number of rows. `fresh`: slides whose rows are recomputed (None:
    all, and an error if there is no finished slide)."""
    out_dir = Path(out_dir)
    if not finished_slides(out_dir):
        if fresh is None:
            raise HoverNetError(
                f"no finished slide in {out_dir} (no <slide>{SUMMARY}): give the --output_dir "
                "of `hovernet infer wsi`, after at least one slide has finished"
            )
        return 0
    table = out_dir / COHORT_CSV
    if table.name.removesuffix(".csv") in finished_slides(out_dir):
        raise HoverNetError(
            f"{table} holds the nuclei of the slide named {table.stem}, not the cohort table: "
            "rename that slide's file and rerun it, or give the slides another --output_dir"
        )
    with table_lock(out_dir):
        redo = None if fresh is None else set(fresh)
        kept = {} if redo is None else {r["slide"]: r for r in read_table(table)}
        rows = []
        for name, summary_path in finished_slides(out_dir).items():
            if name in kept and name not in redo:
                rows.append(kept[name])
                continue
            row = slide_table_row(out_dir, name, summary_path)
            if row is not None:
                rows.append(row)
        if rows:
            write_table(table, rows)
    return len(rows)


def update_after_slide(out_dir: Path, name: str, status: str, log: Callable[[str], None]) -> None:
    """Slide mode's hook after each slide: a finished slide's row recomputed ("done"), or
    only missing rows filled ("skipped"); a problem is a warning, the slide stays finished."""
    if status == "failed":
        return
    try:
        update_cohort_table(out_dir, [name] if status == "done" else [])
    except (HoverNetError, OSError) as exc:
        log(f"warning: {Path(out_dir) / COHORT_CSV} not updated: {exc}")
