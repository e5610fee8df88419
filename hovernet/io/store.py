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
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.errors import HoverNetError
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

_BASE_COLUMNS = (
    "region, type, type_prob, x, y, cx, cy, rmin, cmin, rmax, cmax, "
    + ", ".join(MEASUREMENTS)
    + ", type_probs, contour, outline"
)
_COLUMNS = _BASE_COLUMNS + ", " + ", ".join(FEATURES)
_NO_FEATURES = ", NULL" * len(FEATURES)


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
        rows = [_row(index, rec) for rec in nuclei]
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
            yield _record(row)


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


def records_by_id(db: sqlite3.Connection, ids: list[int]) -> list[dict[str, Any]]:
    """The records (as `NucleusStore.nuclei` gives them) of the nuclei with these store ids, in
    that order, read through any connection to a store (the viewer's read-only one); ids that
    are not stored are left out."""
    rows: dict[int, tuple] = {}
    have = {row[1] for row in db.execute("PRAGMA table_info(nuclei)")}
    # a store made before the colour features, opened read-only, has no columns for them
    columns = _COLUMNS if all(k in have for k in FEATURES) else _BASE_COLUMNS + _NO_FEATURES
    for start in range(0, len(ids), 500):
        chunk = [int(i) for i in ids[start : start + 500]]
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT id, {columns} FROM nuclei WHERE id IN ({marks})"
        rows.update((row[0], row) for row in db.execute(sql, chunk))
    return [_record(rows[int(i)]) for i in ids if int(i) in rows]


def _row(region: int, rec: Mapping[str, Any]) -> tuple:
    (rmin, cmin), (rmax, cmax) = rec["bbox"]
    shapes = rec["measurements"]
    probs = rec.get("type_probs")
    t, p = rec.get("type"), rec.get("type_prob")
    return (
        region,
        None if t is None else int(t),
        None if p is None else float(p),
        float(rec["xy"][0]),
        float(rec["xy"][1]),
        float(rec["centroid"][0]),
        float(rec["centroid"][1]),
        int(rmin),
        int(cmin),
        int(rmax),
        int(cmax),
        *(float(shapes[k]) for k in MEASUREMENTS),
        None if probs is None else json.dumps([float(v) for v in probs]),
        np.asarray(rec["contour"], dtype=np.int32).tobytes(),
        # the outer boundary of the nucleus pixels in corner coordinates (GeoJSON polygons)
        json.dumps(shapes["outline"]) if shapes.get("outline") else None,
        # colour features when measured (NaN is stored as NULL, as SQLite has no NaN)
        *(_real(shapes.get(k)) for k in FEATURES),
    )


def _real(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def _record(row: tuple) -> dict[str, Any]:
    nid, region, t, p, x, y, cx, cy, rmin, cmin, rmax, cmax, *rest = row
    n = len(MEASUREMENTS)
    shapes, probs, contour, outline = rest[:n], rest[n], rest[n + 1], rest[n + 2]
    colour = rest[n + 3 :]
    rec: dict[str, Any] = {
        "store_id": nid,
        "region": region,
        "bbox": [[rmin, cmin], [rmax, cmax]],
        "centroid": [cx, cy],
        "contour": np.frombuffer(contour, dtype=np.int32).reshape(-1, 2),
        "type": t,
        "type_prob": p,
        "xy": [x, y],
        "measurements": dict(zip(MEASUREMENTS, shapes, strict=True)),
    }
    if outline is not None:
        rec["measurements"]["outline"] = json.loads(outline)
    if any(v is not None for v in colour):  # measured: NULL is NaN
        rec["measurements"].update(
            (k, math.nan if v is None else v) for k, v in zip(FEATURES, colour, strict=True)
        )
    if probs is not None:
        rec["type_probs"] = json.loads(probs)
    return rec
