"""Read-only nucleus queries for the viewer: boxes through an R*Tree, a density grid, records.

`StoreIndex(path)` opens a slide-mode nucleus store (`hovernet.io.store`) **read-only**: SQLite
`mode=ro`, plus `immutable=1` when no `-wal` file lies beside it, so that nothing is created or
changed in the output folder. Each server thread gets its own connection.

Boxes are found through the R*Tree of nucleus bboxes that slide mode fills with each region
(`nuclei_rtree`). A store made before that table existed gets a *sidecar* index instead, built
once without writing the store: `<store>.view-index.db` beside it when that folder is writable,
else in the user's cache folder (`$XDG_CACHE_HOME/hovernet/view/`). The sidecar records a
signature of the store (nucleus count, largest id, the regions and their counts) and is rebuilt
when the store changes.

Coordinates here are the store's (whole-slide pixels at the outline resolution); `meta["scale"]`
level-0 pixels per store pixel.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.store import RTREE_TABLE, records_by_id

# the values a nucleus can be coloured by; area is given in um^2
VALUE_KEYS = ("area", "eccentricity", "solidity", "type_prob")
SIDECAR_SUFFIX = ".view-index.db"
DENSITY_BINS = 256  # cells along the longer side of the slide
MIN_CELL_UM = 8.0  # smallest density cell side
_RANGE_SAMPLE = 20000  # nuclei sampled for the colour ranges


def _ro_uri(path: Path) -> str:
    """A read-only SQLite URI; immutable (no lock files created) unless a WAL must be read."""
    wal = Path(f"{path}-wal")
    immutable = not (wal.exists() and wal.stat().st_size > 0)
    return path.resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")


def _signature(db: sqlite3.Connection, schema: str = "main") -> str:
    count, top = db.execute(f"SELECT COUNT(*), MAX(id) FROM {schema}.nuclei").fetchone()
    regions = db.execute(f"SELECT idx, n_nuclei FROM {schema}.regions ORDER BY idx").fetchall()
    digest = hashlib.sha1(json.dumps(regions).encode()).hexdigest()[:16]
    return f"{count}:{top}:{digest}"


def sidecar_path(store: Path, cache_dir: Path | None = None) -> Path:
    """Where the sidecar index of `store` goes: beside it if that folder is writable, else in
    `cache_dir` (default `$XDG_CACHE_HOME/hovernet/view`) under a name made from its path."""
    store = store.resolve()
    if cache_dir is None and os.access(store.parent, os.W_OK):
        return store.with_name(store.name + SIDECAR_SUFFIX)
    if cache_dir is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cache_dir = base / "hovernet" / "view"
    key = hashlib.sha1(str(store).encode()).hexdigest()[:16]
    return cache_dir / f"{store.stem}-{key}{SIDECAR_SUFFIX}"


def build_sidecar(store: Path, target: Path) -> None:
    """Write the R*Tree of `store`'s nucleus bboxes to `target` (temporary name, then renamed);
    the store is only read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(f"{tmp.resolve().as_uri()}?mode=rwc", uri=True, isolation_level=None)
    try:
        db.execute("ATTACH DATABASE ? AS s", (_ro_uri(store),))
        db.execute("BEGIN")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(f"CREATE VIRTUAL TABLE {RTREE_TABLE} USING rtree(id, xmin, xmax, ymin, ymax)")
        db.execute(f"INSERT INTO {RTREE_TABLE} SELECT id, cmin, cmax, rmin, rmax FROM s.nuclei")
        db.execute("INSERT INTO meta VALUES ('signature', ?)", (_signature(db, "s"),))
        db.execute("COMMIT")
        db.execute("DETACH DATABASE s")
    finally:
        db.close()
    os.replace(tmp, target)


class StoreIndex:
    """One store, read-only (see the module docstring). Safe to use from several threads."""

    def __init__(self, path: str | os.PathLike, cache_dir: Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise HoverNetError(f"nucleus store {self.path} does not exist: check the folder")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._cache: dict[str, Any] = {}
        self._connections: list[sqlite3.Connection] = []
        self._sidecar: Path | None = None
        db = self._open()
        try:
            self.meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
            has_rtree = db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (RTREE_TABLE,)
            ).fetchone()
            signature = None if has_rtree else _signature(db)
        except sqlite3.DatabaseError as exc:
            raise HoverNetError(
                f"{self.path} is not a readable nucleus store ({exc}): rerun slide mode "
                "with --overwrite for this slide"
            ) from exc
        finally:
            db.close()
        if "scale" not in self.meta:
            raise HoverNetError(
                f"{self.path} records no scale (not a slide-mode store?): rerun slide mode"
            )
        self.scale = float(self.meta["scale"])
        self.um_per_px = float(self.meta.get("slide_mpp") or 0) * self.scale or None
        if signature is not None:
            self._sidecar = self._ensure_sidecar(signature, cache_dir)
        self._rtree = f"idx.{RTREE_TABLE}" if self._sidecar else RTREE_TABLE

    # -- connections ----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(_ro_uri(self.path), uri=True, check_same_thread=False)
            if self._sidecar is not None:
                db.execute("ATTACH DATABASE ? AS idx", (_ro_uri(self._sidecar),))
            return db
        except sqlite3.DatabaseError as exc:
            raise HoverNetError(
                f"cannot open {self.path} read-only ({exc}): check its permissions"
            ) from exc

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._open()
            with self._lock:
                self._connections.append(db)
        return db

    def _ensure_sidecar(self, signature: str, cache_dir: Path | None) -> Path:
        target = sidecar_path(self.path, cache_dir)
        if target.is_file():
            try:
                with sqlite3.connect(_ro_uri(target), uri=True) as db:
                    row = db.execute("SELECT value FROM meta WHERE key = 'signature'").fetchone()
                if row and row[0] == signature:
                    return target
            except sqlite3.DatabaseError:
                pass  # unreadable or half-written: rebuild
        try:
            build_sidecar(self.path, target)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise HoverNetError(
                f"{self.path} has no spatial index and the one for it could not be written to "
                f"{target} ({exc}): make that folder writable or set XDG_CACHE_HOME"
            ) from exc
        return target

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- queries --------------------------------------------------------------------------------
    def count(self) -> int:
        return self._cached(
            "count", lambda db: db.execute("SELECT COUNT(*) FROM nuclei").fetchone()[0]
        )

    def counts_by_type(self) -> dict[int | None, int]:
        """Nuclei per type (None: untyped), from the density grid (one pass over the store)."""
        grid = self.density()
        sums = grid["counts"].sum(axis=(1, 2))
        return {t: int(n) for t, n in zip(grid["types"], sums.tolist(), strict=True)}

    def query(
        self,
        box: tuple[float, float, float, float],
        types: Iterable[int | None] | None = None,
        limit: int = 10000,
        header: dict[str, Any] | None = None,
    ) -> bytes:
        """Nuclei whose bbox meets `box` = (x0, y0, x1, y1) in store pixels, of the given
        types (None: all), at most `limit` of them (`truncated` says when more met it).

        Returns the binary answer of `pack_nuclei` (`unpack_nuclei` reads it), with `header`'s
        fields added to its header."""
        columns = "n.id, n.type, n.type_prob, n.area, n.eccentricity, n.solidity, n.contour"
        rows = self._in_box(columns, box, types, limit)
        return pack_nuclei(rows[:limit], len(rows) > limit, self.um_per_px, header)

    def ids_in_box(
        self,
        box: tuple[float, float, float, float],
        types: Iterable[int | None] | None = None,
        limit: int = 10000,
    ) -> tuple[list[int], bool]:
        """Store ids of the nuclei `query` finds (at most `limit`), and whether more met `box`."""
        rows = self._in_box("n.id", box, types, limit)
        return [r[0] for r in rows[:limit]], len(rows) > limit

    def count_in_box(
        self,
        box: tuple[float, float, float, float],
        types: Iterable[int | None] | None = None,
        limit: int = 10000,
    ) -> int:
        """How many nuclei `ids_in_box` finds (the same rule), counted up to `limit` + 1."""
        sql, args = self._box_sql("1", box, types, limit)
        return self._db().execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()[0]

    def _in_box(self, columns: str, box, types, limit: int) -> list[tuple]:
        return self._db().execute(*self._box_sql(columns, box, types, limit)).fetchall()

    def _box_sql(self, columns: str, box, types, limit: int) -> tuple[str, tuple]:
        """The query for at most `limit` + 1 nuclei whose bbox meets `box` (store pixels)."""
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
        """Full records (`hovernet.io.store` layout, `store_id` included) of these store ids."""
        return records_by_id(self._db(), ids)

    def export_numbers(self, ids: Iterable[int]) -> dict[int, int]:
        """Store id -> the nucleus' number in the exports (1..N in store order: by region, then
        id), as the CSV's `id` and the GeoJSON's "Nucleus ID" give it."""
        db = self._db()
        ids = sorted({int(i) for i in ids})
        offsets = self._region_offsets()
        out: dict[int, int] = {}
        by_region: dict[int, list[int]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for nid, region in db.execute(
                f"SELECT id, region FROM nuclei WHERE id IN ({marks})", chunk
            ):
                by_region.setdefault(region, []).append(nid)
        for region, members in by_region.items():
            order = [r for (r,) in db.execute("SELECT id FROM nuclei WHERE region = ?", (region,))]
            order.sort()
            for nid in members:
                out[nid] = offsets[region] + bisect_left(order, nid) + 1
        return out

    def _region_offsets(self) -> dict[int, int]:
        def compute(db: sqlite3.Connection) -> dict[int, int]:
            counts = db.execute(
                "SELECT region, COUNT(*) FROM nuclei GROUP BY region ORDER BY region"
            )
            offsets, total = {}, 0
            for region, n in counts:
                offsets[region] = total
                total += n
            return offsets

        return self._cached("offsets", compute)

    def density(self, bins: int = DENSITY_BINS) -> dict[str, Any]:
        """Nucleus centroids counted on a grid of `cell`-pixel squares (store pixels), per type:
        `{"cell", "shape": [rows, cols], "types": [...], "counts": uint32 (types, rows, cols)}`."""

        def compute(db: sqlite3.Connection) -> dict[str, Any]:
            width, height = self.meta["dimensions"]
            w, h = width / self.scale, height / self.scale
            # at least MIN_CELL_UM across: a cell holds a few nuclei, not one
            least = MIN_CELL_UM / self.um_per_px if self.um_per_px else 16.0
            cell = float(max(np.ceil(least), np.ceil(max(w, h) / bins)))
            cols, rows = int(np.ceil(w / cell)) or 1, int(np.ceil(h / cell)) or 1
            # one integer key per (type, row, column), grouped by SQLite in one pass
            plane = rows * cols
            sql = (
                "SELECT (COALESCE(type, -1) + 1) * ? + MIN(MAX(CAST(cy / ? AS INTEGER), 0), ?) * ?"
                " + MIN(MAX(CAST(cx / ? AS INTEGER), 0), ?) AS k, COUNT(*) FROM nuclei GROUP BY k"
            )
            args = (plane, cell, rows - 1, cols, cell, cols - 1)
            found = np.array(db.execute(sql, args).fetchall(), dtype=np.int64).reshape(-1, 2)
            codes = found[:, 0] // plane
            types = [None if c == 0 else int(c) - 1 for c in np.unique(codes).tolist()]
            types.sort(key=lambda t: (t is None, t or 0))
            layer = {(0 if t is None else t + 1): i for i, t in enumerate(types)}
            counts = np.zeros((len(types), plane), np.uint32)
            index = np.array([layer[c] for c in codes.tolist()], dtype=np.int64)
            counts[index, found[:, 0] % plane] = found[:, 1]
            return {
                "cell": cell,
                "shape": [rows, cols],
                "types": types,
                "counts": counts.reshape(len(types), rows, cols),
            }

        return self._cached(f"density{int(bins)}", compute)

    def value_ranges(self) -> dict[str, list[float]]:
        """The 1st and 99th percentile of each of VALUE_KEYS over (a sample of) the nuclei."""

        def compute(db: sqlite3.Connection) -> dict[str, list[float]]:
            # a random sample of ids (store ids may have gaps: a few draws miss)
            lo, hi = db.execute("SELECT MIN(id), MAX(id) FROM nuclei").fetchone()
            sql = "SELECT area, eccentricity, solidity, type_prob FROM nuclei"
            if lo is None or hi - lo < 2 * _RANGE_SAMPLE:
                rows = db.execute(sql).fetchall()
            else:
                ids = np.random.default_rng(0).integers(lo, hi + 1, _RANGE_SAMPLE).tolist()
                rows = []
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    marks = ", ".join("?" * len(chunk))
                    rows += db.execute(f"{sql} WHERE id IN ({marks})", chunk).fetchall()
            values = np.array(rows, dtype=float).reshape(-1, len(VALUE_KEYS))
            if self.um_per_px:
                values[:, 0] *= self.um_per_px**2
            out = {}
            for i, key in enumerate(VALUE_KEYS):
                col = values[:, i][np.isfinite(values[:, i])]
                lo, hi = np.percentile(col, [1, 99]) if col.size else (0.0, 1.0)
                out[key] = [float(lo), float(hi if hi > lo else lo + 1e-6)]
            return out

        return self._cached("ranges", compute)

    def _cached(self, key: str, compute) -> Any:
        """compute(connection) once (the first caller computes, others wait for it)."""
        value = self._cache.get(key)
        if value is None:
            with self._compute_lock:
                value = self._cache.get(key)
                if value is None:
                    value = self._cache[key] = compute(self._db())
        return value


def _type_clause(types: Iterable[int | None] | None) -> tuple[str, list[int]]:
    if types is None:
        return "", []
    types = list(types)
    ids = [int(t) for t in types if t is not None]
    parts = []
    if ids:
        parts.append(f"n.type IN ({', '.join('?' * len(ids))})")
    if any(t is None for t in types):
        parts.append("n.type IS NULL")
    return f" AND ({' OR '.join(parts) or '0'})", ids


# the arrays of a packed query answer, in order: name, dtype, length (n nuclei, m points)
_PACKED = (
    ("ids", "<f8", "n"),
    ("types", "<i4", "n"),
    ("type_prob", "<f4", "n"),
    ("area", "<f4", "n"),
    ("eccentricity", "<f4", "n"),
    ("solidity", "<f4", "n"),
    ("offsets", "<i4", "n+1"),
    ("coords", "<i4", "2m"),
)


def pack_nuclei(
    rows: list[tuple],
    truncated: bool,
    um_per_px: float | None,
    header: dict[str, Any] | None = None,
) -> bytes:
    """Rows (id, type, type_prob, area, eccentricity, solidity, contour BLOB) -> one binary
    answer the page reads without parsing: a little-endian uint32 header length, a JSON header
    `{"n", "m", "truncated", "arrays": [[name, dtype, offset], ...], **header}` padded to 8
    bytes, then the arrays of _PACKED (ids as float64, types int32 with -1 for untyped, values
    float32 with NaN for missing, area in um^2 when the resolution is known, contour k =
    coords[2 * offsets[k] : 2 * offsets[k + 1]] as x, y pairs in store pixels through pixel
    centres)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * 7
    ids, types, probs, area, ecc, solidity, blobs = columns
    offsets = np.zeros(len(rows) + 1, "<i4")
    np.cumsum(np.fromiter(map(len, blobs), np.int64, len(blobs)) // 8, out=offsets[1:])
    arrays = {
        "ids": np.array(ids, "<f8"),
        "types": np.array([-1 if t is None else t for t in types], "<i4"),
        "type_prob": np.array(probs, "<f4"),
        "area": np.array(area, np.float64) * (um_per_px**2 if um_per_px else 1.0),
        "eccentricity": np.array(ecc, "<f4"),
        "solidity": np.array(solidity, "<f4"),
        "offsets": offsets,
        "coords": np.frombuffer(b"".join(blobs), np.int32),
    }
    parts, layout, at = [], [], 0
    for name, dtype, _ in _PACKED:
        data = np.ascontiguousarray(arrays[name], dtype).tobytes()
        layout.append([name, dtype, at])
        parts.append(data)
        at += len(data)
    head = {"n": len(rows), "m": int(offsets[-1]), "truncated": bool(truncated)}
    head.update(header or {}, arrays=layout)
    text = json.dumps(head).encode()
    text += b" " * (-(4 + len(text)) % 8)
    return len(text).to_bytes(4, "little") + text + b"".join(parts)


def unpack_nuclei(data: bytes) -> dict[str, Any]:
    """The header fields and arrays (numpy) of a `pack_nuclei` answer (for tests and tools)."""
    size = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + size])
    base = 4 + size
    lengths = {"n": header["n"], "n+1": header["n"] + 1, "2m": 2 * header["m"]}
    out = {k: v for k, v in header.items() if k != "arrays"}
    for (name, dtype, at), (_, _, length) in zip(header["arrays"], _PACKED, strict=True):
        out[name] = np.frombuffer(data, dtype, lengths[length], base + at)
    return out
