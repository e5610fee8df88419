"""Which files a run reads: the one listing of inputs for tile mode and slide mode.

An input spec is a file, a folder (its files with the wanted suffixes, sorted, hidden files
left out), a glob pattern, or a list file (.txt/.lst/.list: one path per line, relative to the
list file, # comments). Two inputs whose outputs would share a name are an error.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from hovernet.errors import HoverNetError
from hovernet.io.names import output_stem
from hovernet.io.slides import IMAGE_SUFFIXES, PLAIN_SUFFIXES, TIFF_SUFFIXES

TILE_SUFFIXES = PLAIN_SUFFIXES | TIFF_SUFFIXES
SLIDE_SUFFIXES = IMAGE_SUFFIXES | {".dcm"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}


def list_files(specs: Iterable[str | os.PathLike], suffixes: set[str], noun: str) -> list[Path]:
    """The files named by `specs` (see the module docstring), in order, without repeats.

    In a folder only files with `suffixes` count; a file named directly (or in a list file) is
    kept whatever its suffix (reading it will say what is wrong). `noun` ("images", "slides")
    names them in errors."""
    files: list[Path] = []
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
            )
            if not found:
                raise HoverNetError(
                    f"no {noun} in {path}: put {noun} there ({', '.join(sorted(suffixes))})"
                )
            files.extend(found)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            files.extend(_listed(path, noun))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not found:
                raise HoverNetError(f"no {noun} match {text!r}: check the pattern")
            files.extend(found)
        else:
            raise HoverNetError(
                f"input {text} does not exist: pass {_one(noun)}, a folder, a glob pattern or "
                "a list file"
            )
    return unique_stems(files, noun)


def _one(noun: str) -> str:
    return {"images": "an image", "slides": "a slide"}.get(noun, f"a file of {noun}")


def _listed(path: Path, noun: str) -> list[Path]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    files = [Path(ln) if Path(ln).is_absolute() else path.parent / ln for ln in lines]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise HoverNetError(f"{path} lists {noun} that do not exist: {', '.join(missing[:5])}")
    if not files:
        raise HoverNetError(f"{path} lists no {noun}: put one path per line")
    return files


def unique_stems(files: list[Path], noun: str) -> list[Path]:
    """`files` without repeats; two files whose outputs would share a name are an error."""
    names: dict[str, Path] = {}
    for file in files:
        name = output_stem(file)
        if name in names and names[name] != file:
            raise HoverNetError(
                f"{noun} {names[name]} and {file} would both write outputs named "
                f"{name!r}: rename one or run them separately"
            )
        names[name] = file
    return list(names.values())


def list_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Tile mode's images (PNG, JPEG, TIFF in folders)."""
    return list_files(paths, TILE_SUFFIXES, "images")


def list_slides(spec: str | os.PathLike) -> list[Path]:
    """Slide mode's slides: one slide file, a folder, a glob pattern or a list file."""
    return list_files([spec], SLIDE_SUFFIXES, "slides")
