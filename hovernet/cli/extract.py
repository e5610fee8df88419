"""`hovernet extract-patches`: image/annotation pairs -> one training patch folder."""

from __future__ import annotations

from pathlib import Path

import typer

FORMAT_HELP = (
    "auto, colour, inst, mat, xml, geojson, masks, patch or points (see docs/training-data.md)"
)


def register(app: typer.Typer) -> None:
    @app.command("extract-patches")
    def extract_patches(
        annotations: Path = typer.Option(
            ...,
            "--annotations",
            "--ann-dir",
            "--ann_dir",
            help="Annotation file or folder (named after the images: S_mask.png, S.xml, ...).",
        ),
        out: Path = typer.Option(..., "--out", "--out-dir", "--out_dir", help="Dataset folder."),
        images: Path | None = typer.Option(
            None, "--images", "--img-dir", "--img_dir", help="Image file or folder."
        ),
        fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
        type_info: Path | None = typer.Option(
            None, "--type-info", "--type_info", help="type_info.json (class names and colours)."
        ),
        merge_classes: str | None = typer.Option(
            None,
            "--merge-classes",
            "--merge_classes",
            help="Class merge table: a preset (consep) or a JSON file {source id: new id}.",
        ),
        preset: str | None = typer.Option(
            None, "--preset", help="Window preset: original (540/80) or fast (540/164)."
        ),
        window: int | None = typer.Option(
            None,
            "--window",
            "--win-size",
            "--win_size",
            help="Window (patch) size in pixels; default: the preset's (540).",
        ),
        step: int | None = typer.Option(
            None,
            "--step",
            "--step-size",
            "--step_size",
            help="Pixels between windows; default: the preset's (164; 80 for original).",
        ),
        min_size: int = typer.Option(
            10, "--min-size", "--min_size", help="Colour masks: drop smaller components (px)."
        ),
        colour_tolerance: int = typer.Option(
            0,
            "--colour-tolerance",
            "--color-tolerance",
            help="Colour masks: snap colours within this channel difference (JPEG masks).",
        ),
        point_classes: str | None = typer.Option(
            None,
            "--point-classes",
            "--point_classes",
            help="Points: class names -> --type-info names, e.g. fibroblast=spindle-shaped "
            "(name=- drops a class).",
        ),
        point_base: int = typer.Option(
            0, "--point-base", "--point_base", help="Points: 0- or 1-based (MATLAB) x, y."
        ),
        point_radius: float = typer.Option(
            3.0,
            "--point-radius",
            "--point_radius",
            help="Points: radius in pixels of the disk of type target around each point.",
        ),
        valid_fraction: float = typer.Option(
            0.2, "--valid-fraction", "--valid_fraction", help="Share of source images for valid."
        ),
        split_file: Path | None = typer.Option(
            None, "--split-file", "--split_file", help='JSON {"train": [...], "valid": [...]}.'
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the train/valid draw."),
        compress: str = typer.Option(
            "labels", "--compress", help="Deflate in the .npz: labels (default), all or none."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Delete an existing dataset folder first."
        ),
        quiet: bool = typer.Option(
            False, "--quiet", help="No progress bar or per-source lines; errors only."
        ),
    ) -> None:
        """Cut training patches (mirror-padded windows) from many image/annotation pairs."""
        from rich.console import Console

        from hovernet.data.extraction import (
            PRESETS,
            ExtractConfig,
            remove_dataset,
            run_extraction,
        )
        from hovernet.data.sources import find_sources
        from hovernet.errors import HoverNetError
        from hovernet.io.atomic import check_writable_dir
        from hovernet.io.type_info import load_type_info
        from hovernet.progress import Progress

        size, stride = PRESETS["fast"]
        if preset is not None:
            if preset not in PRESETS:
                raise HoverNetError(f"--preset {preset!r}: use one of {', '.join(PRESETS)}")
            size, stride = PRESETS[preset]
        size, stride = window or size, step or stride
        if not 0 < stride <= size:
            raise HoverNetError(f"--step {stride} must be in 1..--window {size}")
        info = load_type_info(type_info) if type_info is not None else None
        sources = find_sources(images, annotations, fmt, typed=info is not None)
        _check_colours(sources)  # before --overwrite deletes anything
        if overwrite:
            check_writable_dir(out.parent, "folder of --out")
            remove_dataset(out)
        config = ExtractConfig(
            out_dir=out, window=size, step=stride, fmt=fmt, type_info=info,
            merge=merge_classes, min_size=min_size, colour_tolerance=colour_tolerance,
            valid_fraction=valid_fraction, seed=seed, split_file=split_file, compress=compress,
            point_classes=point_classes, point_base=point_base, point_radius=point_radius,
        )  # fmt: skip
        total = _count_windows(sources, size, stride)
        with Progress(total, "extract-patches", unit="patches", quiet=quiet) as bar:

            def on_source(source, split, skipped):
                if skipped:
                    bar.log(f"skip (done) {source.name} -> {split}")
                    n = _count_windows([source], size, stride)
                    if bar.total and n:
                        bar.set_total(bar.total - n)
                else:
                    bar.log(f"extract {source.name} -> {split}")

            results = run_extraction(config, sources, on_source, progress=bar.advance)
        if not quiet:
            _print_counts(Console(stderr=True), out, results)


def _check_colours(sources, side: int = 1024) -> None:
    """Refuse a source image that an H&E model cannot read (greyscale, or practically no
    colour: `hovernet.io.input_checks.colour_problem`) before anything is written: one
    HoverNetError naming the image. Judged on a thumbnail at most `side` px across; an image
    that cannot be read here is left to the extraction, which says why in its own words."""
    from hovernet.errors import HoverNetError
    from hovernet.io.input_checks import refuse_colourless
    from hovernet.io.wsi import open_slide

    for source in sources:
        if source.image is None:  # the original's .npy patches
            continue
        try:
            with open_slide(source.image, mpp=1.0) as slide:  # a placeholder mpp: pixels only
                thumb, _ = slide.thumbnail(side)
        except HoverNetError:
            continue
        refuse_colourless(source.image, thumb)


def _count_windows(sources, size: int, stride: int) -> int | None:
    """Patches the sources will give (None when an image size cannot be read cheaply)."""
    from hovernet.data.patches import WindowSpec, window_grid
    from hovernet.io.slides import image_size

    total = 0
    for source in sources:
        if source.image is None:
            total += 1
            continue
        shape = image_size(source.image)
        if shape is None:
            return None
        total += len(window_grid(*shape, WindowSpec(size, stride)))
    return total


def _print_counts(console, out: Path, results) -> None:
    import json

    from rich.table import Table

    counts = json.loads((out / "class_counts.json").read_text())
    table = Table(title=f"{out}: class counts (nuclei / nucleus pixels in the source images)")
    table.add_column("class")
    for split in ("train", "valid"):
        s = counts["splits"][split]
        table.add_column(
            f"{split} nuclei ({s['images']} img, {s['patches']} patches)", justify="right"
        )
        table.add_column(f"{split} pixels", justify="right")
    for name in counts["classes"].values():
        cells = []
        for split in ("train", "valid"):
            s = counts["splits"][split]
            cells += [f"{s['instances'][name]:,}", f"{s['pixels'][name]:,}"]
        table.add_row(name, *cells)
    console.print(table)
    n = sum(len(r.rows) for r in results)
    console.print(f"{n} patches in {out} (manifest.csv, class_counts.json)")
