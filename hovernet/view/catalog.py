"""The slides of a slide-mode output folder that `hovernet view` serves, and nothing else.

A slide is served when OUT_DIR holds both `<name>.summary.json` (written last by slide mode: the
slide is finished) and its nucleus store `<name>.db`, as files whose real path lies in OUT_DIR
(symlinks out of it are skipped). Its image is the file the summary names under "slide"
(relative paths are tried against the current folder, OUT_DIR and OUT_DIR's parent); `--slide`
gives it when it moved: a file (the slide of a one-slide folder, or the one with its name) or a
folder in which each slide is looked up by its file name.

Class names and colours come from the summary's "type_info" (slide mode records it); for
outputs made before that, names come from "nuclei_per_class" and colours from the slide's
GeoJSON (its first features), with a warning for any class not found there.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hovernet.errors import HoverNetError, HoverNetWarning
from hovernet.io.type_info import TypeInfo, parse_type_info
from hovernet.io.writers import UNKNOWN_COLOUR, class_of
from hovernet.view.index import StoreIndex
from hovernet.view.tiles import Pyramid

SUMMARY_SUFFIX = ".summary.json"
_GEOJSON_SCAN_LINES = 200_000  # features read at most to find class colours of old outputs


def class_key(t: int | None) -> str:
    """The name of a type in URLs and the page: its id, or "none" for untyped nuclei."""
    return "none" if t is None else str(int(t))


@dataclass
class ViewSlide:
    """One servable slide: its store (opened read-only), its image file and its classes."""

    name: str
    summary_path: Path
    summary: dict[str, Any]
    image_path: Path
    index: StoreIndex
    type_info: TypeInfo | None
    _slide: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _readers: int = field(default=0, repr=False)  # threads reading the image now
    _closed: bool = field(default=False, repr=False)

    @property
    def dimensions(self) -> tuple[int, int]:
        w, h = self.index.meta.get("dimensions") or self.summary["dimensions"]
        return int(w), int(h)

    @property
    def pyramid(self) -> Pyramid:
        return Pyramid(*self.dimensions)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """The image (a `hovernet.io.wsi.Slide`, opened on first use with the resolution slide
        mode used), kept open until this read ends: a `close` meanwhile leaves it to the last
        reader (closing it under a read crashes or hangs the process)."""
        with self._lock:
            if self._closed:
                raise HoverNetError(f"the image of {self.name} is closed (the viewer stopped)")
            if self._slide is None:
                from hovernet.io.wsi import open_slide

                self._slide = open_slide(self.image_path, mpp=self.summary.get("slide_mpp"))
            self._readers += 1
        try:
            yield self._slide
        finally:
            with self._lock:
                self._readers -= 1
                if self._closed and not self._readers:
                    self._close_image()

    def classes(self) -> list[dict[str, Any]]:
        """Legend entries: every class of type_info but the background, plus any type found,
        with counts (0 included)."""
        counts = self.index.counts_by_type()
        types: set[int | None] = set(counts)
        if self.type_info:
            types |= {t for t in self.type_info if t != 0 or counts.get(0)}
        out = []
        for t in sorted(types, key=lambda t: (t is None, t or 0)):
            name, colour = class_of({"type": t}, self.type_info)
            out.append(
                {
                    "key": class_key(t),
                    "type": t,
                    "name": name,
                    "colour": list(colour),
                    "count": int(counts.get(t, 0)),
                }
            )
        return out

    def close(self) -> None:
        """Close the store and the image; what other threads read now closes as they finish."""
        self.index.close()
        with self._lock:
            self._closed = True
            if not self._readers:
                self._close_image()

    def _close_image(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def find_slides(out_dir: Path) -> list[tuple[str, Path, Path]]:
    """(name, summary, store) of every finished slide in `out_dir`, by name; files whose real
    path is outside `out_dir` are skipped."""
    root = out_dir.resolve()
    found = []
    for summary in sorted(out_dir.glob(f"*{SUMMARY_SUFFIX}")):
        name = summary.name[: -len(SUMMARY_SUFFIX)]
        store = out_dir / f"{name}.db"
        if not (summary.is_file() and store.is_file()):
            continue
        if not (_inside(summary, root) and _inside(store, root)):
            warnings.warn(
                f"{summary.parent / name}: skipped, its summary or store links out of {out_dir}",
                HoverNetWarning,
                stacklevel=2,
            )
            continue
        found.append((name, summary, store))
    return found


def resolve_image(
    summary_path: Path, named: str, out_dir: Path, override: Path | None, only: bool
) -> Path:
    """The slide file of a summary naming `named` (see the module docstring)."""
    recorded = Path(named)
    if override is not None:
        if override.is_dir():
            candidate = override / recorded.name
            if candidate.is_file():
                return candidate
            raise HoverNetError(
                f"--slide {override}: no {recorded.name} in it (named by {summary_path}); "
                "pass the folder that holds it"
            )
        if only or override.stem == recorded.stem:
            if not override.is_file():
                raise HoverNetError(f"--slide {override} does not exist: check the path")
            return override
    if recorded.is_absolute():
        candidates = [recorded]
    else:
        candidates = [Path.cwd() / recorded, out_dir / recorded, out_dir.parent / recorded]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise HoverNetError(
        f"{summary_path} names the slide {named}, which does not exist (moved?): pass its new "
        "path with --slide FILE (or --slide FOLDER for a folder of several slides)"
    )


def summary_type_info(summary: dict[str, Any], index: StoreIndex, geojson: Path) -> TypeInfo | None:
    """Class names and colours of a summary (see the module docstring)."""
    if "type_info" in summary:
        return parse_type_info(summary["type_info"], "type_info in the summary")
    names = list(summary.get("nuclei_per_class") or {})
    typed = sorted(t for t in index.counts_by_type() if t is not None)
    if not typed:
        return None
    colours = _geojson_colours(geojson, set(names))
    out: TypeInfo = {}
    missing = []
    for t, name in zip(typed, names, strict=False):
        if name not in colours:
            missing.append(name)
        out[t] = (name, colours.get(name, UNKNOWN_COLOUR))
    if missing:
        warnings.warn(
            f"{geojson}: no colour found for {', '.join(missing)} (output made before slide "
            "mode recorded colours); shown grey: rerun slide mode with --overwrite to record them",
            HoverNetWarning,
            stacklevel=2,
        )
    return out


def _geojson_colours(path: Path, wanted: set[str]) -> dict[str, tuple[int, int, int]]:
    """Class name -> colour from the first features of a slide-mode GeoJSON (one per line)."""
    found: dict[str, tuple[int, int, int]] = {}
    if not path.is_file():
        return found
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i > _GEOJSON_SCAN_LINES or wanted <= set(found):
                    break
                line = line.strip().rstrip(",")
                if not line.startswith('{"type": "Feature"'):
                    continue
                cls = json.loads(line)["properties"]["classification"]
                found.setdefault(cls["name"], tuple(int(c) for c in cls["color"]))
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        pass  # an unreadable GeoJSON: the classes without colours are reported grey
    return found


def load_slides(
    out_dir: str | os.PathLike, slide: Path | None = None, cache_dir: Path | None = None
) -> list[ViewSlide]:
    """Every finished slide of `out_dir`, with its store opened read-only and its image found
    (HoverNetError naming the file and the fix when the folder has none, or an image is lost)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise HoverNetError(f"{out_dir} is not a folder: pass a slide-mode --output_dir")
    found = find_slides(out_dir)
    if not found:
        raise HoverNetError(
            f"{out_dir} holds no finished slide (<slide>.summary.json with <slide>.db): pass "
            "the --output_dir of `hovernet infer wsi` (or demo_output after `make demo`)"
        )
    slides: list[ViewSlide] = []
    try:
        for name, summary_path, store in found:
            try:
                summary = json.loads(summary_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise HoverNetError(
                    f"{summary_path} is not readable JSON ({exc}): rerun slide mode for it"
                ) from exc
            if not isinstance(summary, dict) or "slide" not in summary:
                raise HoverNetError(f"{summary_path} names no slide: rerun slide mode for it")
            image = resolve_image(summary_path, summary["slide"], out_dir, slide, len(found) == 1)
            index = StoreIndex(store, cache_dir)
            try:
                geojson = out_dir / f"{name}.geojson.gz"
                types = summary_type_info(summary, index, geojson)
            except BaseException:
                index.close()
                raise
            slides.append(ViewSlide(name, summary_path, summary, image, index, types))
    except BaseException:
        for s in slides:
            s.close()
        raise
    return slides
