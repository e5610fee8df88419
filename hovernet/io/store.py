"""The per-slide nucleus store: one SQLite file, the resume log and the source of the exports.

Tables (stdlib `sqlite3`, WAL journal, one transaction per finished region):

- `meta(key, value)`: JSON values describing the run (slide, resolutions, region plan, and in
  `run` the checkpoint's hash and the settings that change nuclei). Re-opening a store with
  different values for these keys is refused, so that a resumed run never mixes nuclei made
  with different settings; of a mapping only the fields given now are compared (a field that
  an older version recorded besides them is kept and ignored). Values a run measured or only
  shows (`set_meta`: the HV ranges, the model's display name) are not compared.
- `regions(idx, x0, y0, x1, y1, n_nuclei, n_cut)`: a row per finished region (its core box at
  the processing resolution). A region without a row is redone on resume.
- `nuclei(id, region, type, type_prob, x, y, cx, cy, rmin, cmin, rmax, cmax, area, perimeter,
  eccentricity, solidity, type_probs, contour, outline, <FEATURES>)`: `x, y` is the centroid in
  level-0 pixels of the slide; `cx, cy`, the bbox (`rmin, cmin, rmax, cmax`, max exclusive), the
  measurements (pixels) and `contour` (int32 [x, y] pairs through pixel centres, as tile mode's
  records) are in whole-slide pixels at the processing resolution (twice as fine with sub-pixel
  phases); `meta["scale"]` (level-0 pixels per such pixel) converts them. `type_probs` is a
  JSON list or NULL. The colour features (`hovernet.nuclei.FEATURES`, one REAL column each,
  added to an older store when it is opened) are NULL when not measured or NaN.
- `nuclei_rtree(id, xmin, xmax, ymin, ymax)`: an SQLite R*Tree of the nuclei's bboxes (`cmin,
  cmax, rmin, rmax`, same pixels), filled with each region's nuclei in the same transaction, so
  that a viewer finds the nuclei of a box quickly (`hovernet.view.index`). A store made before
  this table existed gets it, filled, when it is next opened for writing.

A killed run leaves at most one region's transaction unfinished, which SQLite rolls back.

This module alone knows these tables: `NucleusStore` writes a store and streams its records
(the exports), `StoreReader` reads one without changing it (the viewer: boxes through the
R*Tree, records and export numbers by id, counts on a grid), and `write_rtree_copy` gives a
store made before its R*Tree one in a separate file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.store_rows import COLUMNS, record_row, row_record
from hovernet.nuclei import FEATURES, MEASUREMENTS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS regions (
    idx INTEGER PRIMARY KEY, x0 INTEGER, y0 INTEGER, x1 INTEGER, y1 INTEGER,
    n_nuclei INTEGER NOT NULL, n_cut INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nuclei (
    id INTEGER PRIMARY KEY, region INTEGER NOT NULL, type INTEGER, type_prob REAL,
    x REAL NOT NULL, y REAL NOT NULL, cx REAL NOT NULL, cy REAL NOT NULL,
    rmin INTEGER NOT NULL, cmin INTEGER NOT NULL, rmax INTEGER NOT NULL, cmax INTEGER NOT NULL,
    area REAL, perimeter REAL, eccentricity REAL, solidity REAL,
    type_probs TEXT, contour BLOB NOT NULL, outline TEXT
);
CREATE INDEX IF NOT EXISTS nuclei_region ON nuclei (region);
"""

# the R*Tree of nucleus bboxes (x: columns, y: rows; max exclusive) and the rows that fill it
RTREE_TABLE = "nuclei_rtree"
_RTREE_ROWS = "SELECT id, cmin, cmax, rmin, rmax FROM nuclei"

_COLUMNS = ", ".join(COLUMNS)  # the nuclei columns but id, in the order of `record_row`
_BASE_COLUMNS = ", ".join(COLUMNS[: -len(FEATURES)])  # without the colour features
_NO_FEATURES = ", NULL" * len(FEATURES)
Box = tuple[float, float, float, float]  # x0, y0, x1, y1
Types = Iterable[int | None] | None  # nucleus types to keep (None: all; a None in it: untyped)
ID_BATCH = 500  # store ids per `WHERE id IN (...)` query (`id_batches`)


class NucleusStore:
    """Open (or create) the store at `path`; `meta` must match what an existing store holds."""

    def __init__(self, path: str | os.PathLike, meta: Mapping[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            _ensure_feature_columns(self._db)
            self._rtree = _ensure_rtree(self._db)
            old = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise HoverNetError(
                f"{self.path}: not a readable nucleus store ({exc}); delete it or pass --overwrite"
            ) from exc
        new = {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}
        changed = [line for k in new if k in old for line in _differences(k, old[k], new[k])]
        if changed:
            self.close()
            details = "; ".join(changed)
            raise HoverNetError(
                f"{self.path} was made with other settings ({details}): pass --overwrite to "
                "start this slide again, or run with the settings it was made with"
            )
        self._db.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [(k, v) for k, v in new.items() if k not in old],
        )
        self.meta = {k: json.loads(v) for k, v in {**old, **new}.items()}

    def set_meta(self, key: str, value: Any) -> None:
        """Record a value the run measured (not a setting): kept for every later resume."""
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True))
        )
        self.meta[key] = json.loads(json.dumps(value))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> NucleusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def done_regions(self) -> set[int]:
        return {r for (r,) in self._db.execute("SELECT idx FROM regions")}

    def add_region(
        self,
        index: int,
        core: tuple[int, int, int, int],
        nuclei: list[Mapping[str, Any]],
        n_cut: int = 0,
    ) -> None:
        """Store one finished region and its nuclei in one transaction.

        Each nucleus is a record as `postprocess` gives (in whole-slide processing pixels:
        bbox, centroid, contour, type, type_prob[, type_probs]) plus `measurements` (a dict of
        MEASUREMENTS) and `xy` (level-0 centroid).
        """
        rows = [record_row(index, rec) for rec in nuclei]
        marks = ", ".join("?" * (len(MEASUREMENTS) + len(FEATURES) + 14))
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._rtree:
                self._db.execute(
                    f"DELETE FROM {RTREE_TABLE} WHERE id IN "
                    "(SELECT id FROM nuclei WHERE region = ?)",
                    (index,),
                )
            self._db.execute("DELETE FROM nuclei WHERE region = ?", (index,))
            self._db.executemany(f"INSERT INTO nuclei ({_COLUMNS}) VALUES ({marks})", rows)
            if self._rtree:
                self._db.execute(
                    f"INSERT INTO {RTREE_TABLE} {_RTREE_ROWS} WHERE region = ?", (index,)
                )
            self._db.execute(
                "INSERT OR REPLACE INTO regions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (index, *map(int, core), len(rows), int(n_cut)),
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM nuclei").fetchone()[0]

    def n_cut(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(n_cut), 0) FROM regions").fetchone()[0]

    def counts_by_type(self) -> dict[int | None, int]:
        return dict(self._db.execute("SELECT type, COUNT(*) FROM nuclei GROUP BY type"))

    def nuclei(self, box: tuple[int, int, int, int] | None = None) -> Iterator[dict[str, Any]]:
        """Records in export order (region, then the order found), optionally only those whose
        bbox meets `box` = (x0, y0, x1, y1) at the processing resolution."""
        sql = f"SELECT id, {_COLUMNS} FROM nuclei"
        args: tuple = ()
        if box is not None:
            sql += " WHERE cmax > ? AND rmax > ? AND cmin < ? AND rmin < ?"
            args = tuple(int(v) for v in box)
        for row in self._db.execute(sql + " ORDER BY region, id", args):
            yield row_record(row)


def _differences(key: str, old: str, new: str) -> list[str]:
    """How a meta value (JSON text) differs from the one stored: for a mapping (the run's
    identity, "run"), its fields one by one, and only those the new value has, so that a field
    an older version recorded besides them (its display name) does not count."""
    if old == new:
        return []
    before, after = json.loads(old), json.loads(new)
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return [f"{key}: {old} -> {new}"]
    text = {k: json.dumps(v, sort_keys=True) for k, v in after.items()}
    was = {k: json.dumps(before.get(k), sort_keys=True) for k in after}
    return [f"{key}.{k}: {was[k]} -> {text[k]}" for k in after if was[k] != text[k]]


def _ensure_feature_columns(db: sqlite3.Connection) -> None:
    """Add the colour-feature columns (REAL, NULL when not measured) to the nuclei table,
    also to a store made before they existed."""
    have = {row[1] for row in db.execute("PRAGMA table_info(nuclei)")}
    for name in FEATURES:
        if name not in have:
            db.execute(f"ALTER TABLE nuclei ADD COLUMN {name} REAL")


def _ensure_rtree(db: sqlite3.Connection) -> bool:
    """Create the R*Tree (filled from the nuclei already stored, for stores made before it);
    False when this SQLite has no R*Tree module (the store then works without it)."""
    found = db.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (RTREE_TABLE,)).fetchone()
    if found:
        return True
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"CREATE VIRTUAL TABLE {RTREE_TABLE} USING rtree(id, xmin, xmax, ymin, ymax)")
        db.execute(f"INSERT INTO {RTREE_TABLE} {_RTREE_ROWS}")
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        db.execute("ROLLBACK")
        if "no such module" in str(exc):
            return False
        raise
    return True


def id_batches(ids: Sequence[int]) -> Iterator[list[int]]:
    """`ids` as ints, ID_BATCH at a time (one `WHERE id IN (...)` query each)."""
    for start in range(0, len(ids), ID_BATCH):
        yield [int(i) for i in ids[start : start + ID_BATCH]]


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def records_by_id(db: sqlite3.Connection, ids: list[int]) -> list[dict[str, Any]]:
    """The records (as `NucleusStore.nuclei` gives them) of the nuclei with these store ids, in
    that order, read through any connection to a store (`StoreReader`'s read-only one); ids
    that are not stored are left out."""
    rows: dict[int, tuple] = {}
    have = {row[1] for row in db.execute("PRAGMA table_info(nuclei)")}
    # a store made before the colour features, opened read-only, has no columns for them
    columns = _COLUMNS if all(k in have for k in FEATURES) else _BASE_COLUMNS + _NO_FEATURES
    for chunk in id_batches(ids):
        sql = f"SELECT id, {columns} FROM nuclei WHERE id IN ({_marks(chunk)})"
        rows.update((row[0], row) for row in db.execute(sql, chunk))
    return [row_record(rows[int(i)]) for i in ids if int(i) in rows]


# -- reading a store without changing it (the viewer) ---------------------------------------------
# the columns of a nucleus' outline as `StoreReader.outlines_in_box` gives them
OUTLINE_COLUMNS = ("id", "type", "type_prob", "area", "eccentricity", "solidity", "contour")
_VALUE_COLUMNS = {"type_prob", *MEASUREMENTS, *FEATURES}


def read_only_uri(path: Path) -> str:
    """A read-only SQLite URI; immutable (no lock files created) unless a WAL must be read."""
    wal = Path(f"{path}-wal")
    immutable = not (wal.exists() and wal.stat().st_size > 0)
    return path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")


def _signature(db: sqlite3.Connection, schema: str = "main") -> str:
    count, top = db.execute(f"SELECT COUNT(*), MAX(id) FROM {schema}.nuclei").fetchone()
    regions = db.execute(f"SELECT idx, n_nuclei FROM {schema}.regions ORDER BY idx").fetchall()
    digest = hashlib.sha1(json.dumps(regions).encode()).hexdigest()[:16]
    return f"{count}:{top}:{digest}"


def write_rtree_copy(store: Path, path: Path) -> None:
    """Write the R*Tree of `store`'s nucleus bboxes (`RTREE_TABLE`) to the new file `path`, with
    the store's signature (`StoreReader.signature`) in its table `meta`; the store is only
    read. For a store made before its own R*Tree (a viewer's sidecar index)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rwc", uri=True, isolation_level=None)
    try:
        db.execute("ATTACH DATABASE ? AS s", (read_only_uri(store),))
        db.execute("BEGIN")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(f"CREATE VIRTUAL TABLE {RTREE_TABLE} USING rtree(id, xmin, xmax, ymin, ymax)")
        db.execute(f"INSERT INTO {RTREE_TABLE} SELECT id, cmin, cmax, rmin, rmax FROM s.nuclei")
        db.execute("INSERT INTO meta VALUES ('signature', ?)", (_signature(db, "s"),))
        db.execute("COMMIT")
        db.execute("DETACH DATABASE s")
    finally:
        db.close()


def rtree_copy_signature(path: Path) -> str | None:
    """The store signature recorded in an R*Tree copy (`write_rtree_copy`); None when the file
    is unreadable or half-written."""
    try:
        with contextlib.closing(sqlite3.connect(read_only_uri(path), uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


class StoreReader:
    """One read-only connection to the store at `path` (SQLite `mode=ro`, `immutable=1` when no
    WAL is beside it: nothing is created or changed in its folder), usable from any thread but
    not by two at once. `rtree`: a file from `write_rtree_copy` whose R*Tree the box queries
    use (for a store without its own). sqlite3.DatabaseError when the file is not a store."""

    def __init__(self, path: str | os.PathLike, rtree: Path | None = None):
        self.path = Path(path)
        self._db = sqlite3.connect(read_only_uri(self.path), uri=True, check_same_thread=False)
        self._rtree = RTREE_TABLE
        if rtree is not None:
            self._db.execute("ATTACH DATABASE ? AS idx", (read_only_uri(rtree),))
            self._rtree = f"idx.{RTREE_TABLE}"

    def close(self) -> None:
        self._db.close()

    def interrupt(self) -> None:
        """Make the query running now (in another thread) stop with sqlite3.OperationalError."""
        self._db.interrupt()

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def has_rtree(self) -> bool:
        """Whether the store holds its own R*Tree (made by a version that fills it)."""
        sql = "SELECT 1 FROM sqlite_master WHERE name = ?"
        return self._db.execute(sql, (RTREE_TABLE,)).fetchone() is not None

    def signature(self) -> str:
        """Text that changes when the nuclei do: their count, the largest id, the regions."""
        return _signature(self._db)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM nuclei").fetchone()[0]

    def outlines_in_box(self, box: Box, types: Types = None, limit: int = 10000) -> list[tuple]:
        """OUTLINE_COLUMNS of at most `limit` + 1 nuclei whose bbox meets `box` = (x0, y0, x1,
        y1) in store pixels, of the given types (None: all; a None in it: untyped)."""
        columns = ", ".join(f"n.{c}" for c in OUTLINE_COLUMNS)
        return self._db.execute(*self._box_sql(columns, box, types, limit)).fetchall()

    def ids_in_box(self, box: Box, types: Types = None, limit: int = 10000) -> list[int]:
        """The store ids of the nuclei `outlines_in_box` finds (at most `limit` + 1)."""
        sql, args = self._box_sql("n.id", box, types, limit)
        return [nid for (nid,) in self._db.execute(sql, args)]

    def count_in_box(self, box: Box, types: Types = None, limit: int = 10000) -> int:
        """How many nuclei `ids_in_box` finds (the same rule), counted up to `limit` + 1."""
        sql, args = self._box_sql("1", box, types, limit)
        return self._db.execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()[0]

    def _box_sql(self, columns: str, box: Box, types: Types, limit: int) -> tuple[str, tuple]:
        x0, y0, x1, y1 = (float(v) for v in box)
        where, args = _type_clause(types)
        # the nuclei table is only read for its columns or types
        join = "" if columns == "1" and not where else " CROSS JOIN nuclei AS n ON n.id = r.id"
        sql = (
            f"SELECT {columns} FROM {self._rtree} AS r{join} "
            f"WHERE r.xmax > ? AND r.xmin < ? AND r.ymax > ? AND r.ymin < ?{where} LIMIT ?"
        )
        return sql, (x0, x1, y0, y1, *args, int(limit) + 1)

    def records(self, ids: list[int]) -> list[dict[str, Any]]:
        """Full records (`NucleusStore.nuclei`'s, `store_id` included) of these store ids."""
        return records_by_id(self._db, ids)

    def region_offsets(self) -> dict[int, int]:
        """Region -> how many nuclei the regions before it hold (export numbering)."""
        sql = "SELECT region, COUNT(*) FROM nuclei GROUP BY region ORDER BY region"
        offsets, total = {}, 0
        for region, n in self._db.execute(sql):
            offsets[region] = total
            total += n
        return offsets

    def export_numbers(self, ids: Iterable[int], offsets: dict[int, int]) -> dict[int, int]:
        """Store id -> the nucleus' number in the exports (1..N in `NucleusStore.nuclei`'s
        order: by region, then id); `offsets` from `region_offsets`."""
        by_region: dict[int, list[int]] = {}
        for chunk in id_batches(sorted({int(i) for i in ids})):
            sql = f"SELECT id, region FROM nuclei WHERE id IN ({_marks(chunk)})"
            for nid, region in self._db.execute(sql, chunk):
                by_region.setdefault(region, []).append(nid)
        out: dict[int, int] = {}
        for region, members in by_region.items():
            sql = "SELECT id FROM nuclei WHERE region = ?"
            order = sorted(r for (r,) in self._db.execute(sql, (region,)))
            for nid in members:
                out[nid] = offsets[region] + bisect_left(order, nid) + 1
        return out

    def centroid_grid(self, cell: float, rows: int, cols: int) -> tuple[list, np.ndarray]:
        """Nucleus centroids counted on a `rows` x `cols` grid of `cell`-pixel squares (store
        pixels; those outside in the nearest edge cell), per type: the types found (None:
        untyped, last) and uint32 counts (types, rows, cols). One pass over the store."""
        # one integer key per (type, row, column), grouped by SQLite in one pass
        plane = rows * cols
        sql = (
            "SELECT (COALESCE(type, -1) + 1) * ? + MIN(MAX(CAST(cy / ? AS INTEGER), 0), ?) * ?"
            " + MIN(MAX(CAST(cx / ? AS INTEGER), 0), ?) AS k, COUNT(*) FROM nuclei GROUP BY k"
        )
        args = (plane, cell, rows - 1, cols, cell, cols - 1)
        found = np.array(self._db.execute(sql, args).fetchall(), dtype=np.int64).reshape(-1, 2)
        codes = found[:, 0] // plane
        types = [None if c == 0 else int(c) - 1 for c in np.unique(codes).tolist()]
        types.sort(key=lambda t: (t is None, t or 0))
        layer = {(0 if t is None else t + 1): i for i, t in enumerate(types)}
        counts = np.zeros((len(types), plane), np.uint32)
        index = np.array([layer[c] for c in codes.tolist()], dtype=np.int64)
        counts[index, found[:, 0] % plane] = found[:, 1]
        return types, counts.reshape(len(types), rows, cols)

    def id_bounds(self) -> tuple[int | None, int | None]:
        """The smallest and largest store id (None, None when empty); ids may have gaps."""
        return tuple(self._db.execute("SELECT MIN(id), MAX(id) FROM nuclei").fetchone())

    def values(self, keys: Sequence[str], ids: Sequence[int] | None = None) -> list[tuple]:
        """The values `keys` (measurements, colour features, "type_prob"; store pixels) of
        every nucleus, or of those of `ids` that are stored."""
        unknown = [k for k in keys if k not in _VALUE_COLUMNS]
        if unknown:
            raise ValueError(f"not a nucleus value: {unknown}")
        sql = f"SELECT {', '.join(keys)} FROM nuclei"
        if ids is None:
            return self._db.execute(sql).fetchall()
        rows = []
        for chunk in id_batches(ids):
            rows += self._db.execute(f"{sql} WHERE id IN ({_marks(chunk)})", chunk).fetchall()
        return rows


def _type_clause(types: Types) -> tuple[str, list[int]]:
    if types is None:
        return "", []
    types = list(types)
    ids = [int(t) for t in types if t is not None]
    parts = []
    if ids:
        parts.append(f"n.type IN ({_marks(ids)})")
    if any(t is None for t in types):
        parts.append("n.type IS NULL")
    return f" AND ({' OR '.join(parts) or '0'})", ids
