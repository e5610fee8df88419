"""Each slide export on its own: `hovernet.io.slide_exports.export_slide` writes the four files
in one pass over the store; the tests (and benchmarks/bench_export.py) compare it with the
files these write one at a time through the same sinks."""

from __future__ import annotations

import numpy as np

from hovernet.io import slide_exports as ex
from hovernet.io.store import NucleusStore
from hovernet.io.type_info import TypeInfo


def export_geojson(path, store: NucleusStore, type_info: TypeInfo | None, stem: str) -> None:
    ex._export(store, ex._geojson_sink(path, store, type_info, stem))


def export_csv(path, store: NucleusStore, type_info: TypeInfo | None, outline_mpp: float) -> None:
    ex._export(store, ex._csv_sink(path, store, type_info, outline_mpp))


def export_json(path, store: NucleusStore, mag: float | None) -> None:
    ex._export(store, ex._json_sink(path, mag))


def export_overlay(
    path, thumb: np.ndarray, per_thumb_px: float, store: NucleusStore, type_info: TypeInfo | None
) -> None:
    ex._export(store, ex._overlay_sink(path, thumb, per_thumb_px, type_info))
