"""The sources of a patch extraction: which image goes with which annotation (`find_sources`),
and which split each source goes to (`assign_splits`)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from hovernet.errors import HoverNetError
from hovernet.io.annotations import detect_format
from hovernet.io.slides import IMAGE_SUFFIXES

ANN_TOKENS = ("", "_mask", "_inst", "_ann", "_annotation", "_annotations", "_label", "_labels")


@dataclass(frozen=True)
class Source:
    name: str
    image: Path | None  # None for the original's patch .npy (image inside)
    annotation: Path
    fmt: str


def find_sources(images: Path | None, annotations: Path, fmt: str, typed: bool) -> list[Source]:
    """Pair images with annotations by name: image `S.*` <-> annotation `S<token>.*` or folder
    `S/` (or `S/masks/`), token one of ANN_TOKENS. `fmt` "patch" needs no images."""

    if fmt == "patch":
        files = [annotations] if annotations.is_file() else sorted(annotations.glob("*.npy"))
        if not files:
            raise HoverNetError(f"{annotations}: no .npy patches found")
        return [Source(f.stem, None, f, "patch") for f in files]
    if images is None:
        raise HoverNetError("--images is required (the folder or file of the images)")
    if not images.exists():
        raise HoverNetError(f"{images}: no such file or folder")
    if not annotations.exists():
        raise HoverNetError(f"{annotations}: no such file or folder")
    if images.is_file():
        if not annotations.is_file() and fmt != "masks" and annotations.is_dir():
            ann = _find_annotation(images.stem, annotations, images)
        else:
            ann = annotations
        pairs = [(images, ann)]
    else:
        candidates = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        stems = {p.stem for p in candidates}
        pairs = []
        for img in candidates:
            if any(img.stem == s + t for s in stems for t in ANN_TOKENS[1:] + ("_type",)):
                continue  # an annotation that lives beside its image
            pairs.append((img, _find_annotation(img.stem, annotations, img)))
        if not pairs:
            raise HoverNetError(f"{images}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    sources = []
    for img, ann in pairs:
        kind = detect_format(ann, typed) if fmt == "auto" else fmt
        sources.append(Source(img.stem, img, ann, kind))
    return sources


def _find_annotation(stem: str, folder: Path, image: Path) -> Path:
    if folder.is_file():
        return folder
    for token in ANN_TOKENS:
        sub = folder / (stem + token)
        if sub.is_dir():
            return sub / "masks" if (sub / "masks").is_dir() else sub
        for path in sorted(folder.glob(f"{stem}{token}.*")):
            if path != image and not path.name.startswith("."):
                return path
    raise HoverNetError(
        f"{image}: no annotation in {folder} (looked for {stem}.*, "
        + ", ".join(f"{stem}{t}.*" for t in ANN_TOKENS[1:])
        + f" and folder {stem}/); name the annotation after its image"
    )


def assign_splits(
    names: list[str], valid_fraction: float, seed: int, split_file: Path | None
) -> dict[str, str]:
    """Split by source image. A split file {"train": [...], "valid": [...]} ("test" counts as
    valid) wins over `valid_fraction`, which draws round(f * n) sources with `seed`."""
    if split_file is not None:
        try:
            table = json.loads(Path(split_file).read_text())
        except (OSError, ValueError) as exc:
            raise HoverNetError(f"{split_file}: cannot read the split file ({exc})") from exc
        where = {}
        for key, split in (("train", "train"), ("valid", "valid"), ("test", "valid")):
            for name in table.get(key, []):
                where[Path(str(name)).stem] = split
        missing = [n for n in names if n not in where]
        if missing:
            raise HoverNetError(
                f"{split_file}: sources missing from the split file: {', '.join(missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}; list each under train or valid"
            )
        return {n: where[n] for n in names}
    if not 0 <= valid_fraction < 1:
        raise HoverNetError(f"--valid-fraction {valid_fraction} must be in [0, 1)")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n_valid = round(valid_fraction * len(order))
    if valid_fraction > 0 and n_valid == 0 and len(order) > 1:
        n_valid = 1
    valid = set(order[:n_valid])
    return {n: "valid" if n in valid else "train" for n in names}
