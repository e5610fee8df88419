"""Read-only nucleus queries for the viewer: boxes through an R*Tree, a density grid, records.

`StoreIndex(path)` opens a slide-mode nucleus store (`hovernet.io.store`) **read-only**: SQLite
`mode=ro`, plus `immutable=1` when no `-wal` file lies beside it, so that nothing is created or
changed in the output folder. Each server thread gets its own connection. `close` may come
while other threads query (Ctrl-C while the viewer counts the nuclei): it interrupts their
running queries and leaves each of those connections to its thread, which closes it when the
query returns; closing a connection under a running query crashes the process or hangs it.
Every query goes
through the store's read-only API (`hovernet.io.store.StoreReader`), which alone knows its
tables; this module decides where the sidecar lives, what is cached, and how answers are packed.

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

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hovernet.errors import HoverNetError
from hovernet.io.store import StoreReader, rtree_copy_signature, write_rtree_copy

# the values a nucleus can be coloured by; area is given in um^2
VALUE_KEYS = ("area", "eccentricity", "solidity", "type_prob")
SIDECAR_SUFFIX = ".view-index.db"
DENSITY_BINS = 256  # cells along the longer side of the slide
MIN_CELL_UM = 8.0  # smallest density cell side
_RANGE_SAMPLE = 20000  # nuclei sampled for the colour ranges


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
    write_rtree_copy(store, tmp)
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
        self._readers: list[StoreReader] = []  # every thread's, open
        self._busy: Counter[StoreReader] = Counter()  # those running a query now (nested: 2)
        self._closed = False
        self._sidecar: Path | None = None
        reader = self._open()
        try:
            self.meta = reader.meta()
            signature = None if reader.has_rtree() else reader.signature()
        except sqlite3.DatabaseError as exc:
            raise HoverNetError(
                f"{self.path} is not a readable nucleus store ({exc}): rerun slide mode "
                "with --overwrite for this slide"
            ) from exc
        finally:
            reader.close()
        if "scale" not in self.meta:
            raise HoverNetError(
                f"{self.path} records no scale (not a slide-mode store?): rerun slide mode"
            )
        self.scale = float(self.meta["scale"])
        self.um_per_px = float(self.meta.get("slide_mpp") or 0) * self.scale or None
        if signature is not None:
            self._sidecar = self._ensure_sidecar(signature, cache_dir)

    # -- connections ----------------------------------------------------------------------------
    def _open(self) -> StoreReader:
        try:
            return StoreReader(self.path, self._sidecar)
        except sqlite3.DatabaseError as exc:
            raise HoverNetError(
                f"cannot open {self.path} read-only ({exc}): check its permissions"
            ) from exc

    @contextlib.contextmanager
    def _use(self) -> Iterator[StoreReader]:
        """This thread's connection, marked busy while the caller queries (see `close`)."""
        with self._lock:
            if self._closed:
                raise HoverNetError(f"the index of {self.path} is closed (the viewer stopped)")
            reader = getattr(self._local, "reader", None)
            if reader is None:
                reader = self._local.reader = self._open()
                self._readers.append(reader)
            self._busy[reader] += 1
        try:
            yield reader
        finally:
            with self._lock:
                self._busy[reader] -= 1
                if self._closed and not self._busy[reader]:  # `close` left this one to us
                    self._readers.remove(reader)
                    reader.close()

    def _ensure_sidecar(self, signature: str, cache_dir: Path | None) -> Path:
        target = sidecar_path(self.path, cache_dir)
        # an unreadable or half-written one has no signature: rebuilt
        if target.is_file() and rtree_copy_signature(target) == signature:
            return target
        try:
            build_sidecar(self.path, target)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise HoverNetError(
                f"{self.path} has no spatial index and the one for it could not be written to "
                f"{target} ({exc}): make that folder writable or set XDG_CACHE_HOME"
            ) from exc
        return target

    def close(self) -> None:
        """Close the idle connections now; interrupt the queries running in other threads (they
        raise sqlite3.OperationalError), whose connections close as those queries return.
        Queries after this raise HoverNetError."""
        with self._lock:
            self._closed = True
            for reader in self._readers:
                if self._busy[reader]:
                    reader.interrupt()
                else:
                    reader.close()
            self._readers = [r for r in self._readers if self._busy[r]]

    # -- queries --------------------------------------------------------------------------------
    def count(self) -> int:
        return self._cached("count", StoreReader.count)

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
        with self._use() as reader:
            rows = reader.outlines_in_box(box, types, limit)
        return pack_nuclei(rows[:limit], len(rows) > limit, self.um_per_px, header)

    def ids_in_box(
        self,
        box: tuple[float, float, float, float],
        types: Iterable[int | None] | None = None,
        limit: int = 10000,
    ) -> tuple[list[int], bool]:
        """Store ids of the nuclei `query` finds (at most `limit`), and whether more met `box`."""
        with self._use() as reader:
            ids = reader.ids_in_box(box, types, limit)
        return ids[:limit], len(ids) > limit

    def count_in_box(
        self,
        box: tuple[float, float, float, float],
        types: Iterable[int | None] | None = None,
        limit: int = 10000,
    ) -> int:
        """How many nuclei `ids_in_box` finds (the same rule), counted up to `limit` + 1."""
        with self._use() as reader:
            return reader.count_in_box(box, types, limit)

    def records(self, ids: list[int]) -> list[dict[str, Any]]:
        """Full records (`hovernet.io.store` layout, `store_id` included) of these store ids."""
        with self._use() as reader:
            return reader.records(ids)

    def export_numbers(self, ids: Iterable[int]) -> dict[int, int]:
        """Store id -> the nucleus' number in the exports (1..N in store order: by region, then
        id), as the CSV's `id` and the GeoJSON's "Nucleus ID" give it."""
        offsets = self._cached("offsets", StoreReader.region_offsets)
        with self._use() as reader:
            return reader.export_numbers(ids, offsets)

    def density(self, bins: int = DENSITY_BINS) -> dict[str, Any]:
        """Nucleus centroids counted on a grid of `cell`-pixel squares (store pixels), per type:
        `{"cell", "shape": [rows, cols], "types": [...], "counts": uint32 (types, rows, cols)}`."""

        def compute(reader: StoreReader) -> dict[str, Any]:
            width, height = self.meta["dimensions"]
            w, h = width / self.scale, height / self.scale
            # at least MIN_CELL_UM across: a cell holds a few nuclei, not one
            least = MIN_CELL_UM / self.um_per_px if self.um_per_px else 16.0
            cell = float(max(np.ceil(least), np.ceil(max(w, h) / bins)))
            cols, rows = int(np.ceil(w / cell)) or 1, int(np.ceil(h / cell)) or 1
            types, counts = reader.centroid_grid(cell, rows, cols)
            return {"cell": cell, "shape": [rows, cols], "types": types, "counts": counts}

        return self._cached(f"density{int(bins)}", compute)

    def value_ranges(self) -> dict[str, list[float]]:
        """The 1st and 99th percentile of each of VALUE_KEYS over (a sample of) the nuclei."""

        def compute(reader: StoreReader) -> dict[str, list[float]]:
            # a random sample of ids (store ids may have gaps: a few draws miss)
            lo, hi = reader.id_bounds()
            if lo is None or hi - lo < 2 * _RANGE_SAMPLE:
                rows = reader.values(VALUE_KEYS)
            else:
                ids = np.random.default_rng(0).integers(lo, hi + 1, _RANGE_SAMPLE).tolist()
                rows = reader.values(VALUE_KEYS, ids)
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
        """compute(reader) once (the first caller computes, others wait for it)."""
        value = self._cache.get(key)
        if value is None:
            with self._compute_lock:
                value = self._cache.get(key)
                if value is None:
                    with self._use() as reader:
                        value = self._cache[key] = compute(reader)
        return value


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
