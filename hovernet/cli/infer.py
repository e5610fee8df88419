"""`hovernet infer ... tile ...`: segment image tiles, as the original's `run_infer.py tile`.

The original's command line works with `hovernet infer` in place of `python run_infer.py`:

    hovernet infer --nr_types=3 --type_info_path=type_info.json --batch_size=8 \\
        --model_mode=original --model_path=net_epoch=33.tar \\
        tile --input_dir=tiles/ --output_dir=out/ --draw_dot

Options take underscores (as the original) or dashes. Mode, number of types and type names and
colours are read from the checkpoint when it records them; a flag that contradicts the
checkpoint is an error.
"""

from __future__ import annotations

from pathlib import Path

import typer

from hovernet.cli.infer_common import InferOptions, features_option, infer_group, outputs_note
from hovernet.cli.infer_wsi import register_wsi
from hovernet.errors import HoverNetError


def register(app: typer.Typer) -> None:
    infer_app = infer_group()

    @infer_app.command("tile")
    def tile(
        ctx: typer.Context,
        input_dir: list[Path] = typer.Option(
            ...,
            "--input_dir",
            "--input-dir",
            metavar="<path>",
            help="Folder of PNG/JPEG/TIFF images, or an image file; repeat for several.",
        ),
        output_dir: Path = typer.Option(
            ...,
            "--output_dir",
            "--output-dir",
            help="Folder for json/, mat/, overlay/, qupath/ and csv/ (created if missing).",
        ),
        draw_dot: bool = typer.Option(
            False, "--draw_dot", "--draw-dot", help="Centroid dots on the overlay."
        ),
        save_raw_map: bool = typer.Option(
            False, "--save_raw_map", "--save-raw-map", help="Network maps in the .mat as raw_map."
        ),
        save_qupath: bool = typer.Option(
            False,
            "--save_qupath",
            "--save-qupath",
            hidden=True,
            help="Accepted for the original's command lines; qupath/ is always written.",
        ),
        mem_usage: float = typer.Option(
            0.2,
            "--mem_usage",
            "--mem-usage",
            help="Share of memory for network maps waiting for post-processing.",
        ),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help="Redo every image; by default images with all five outputs are skipped.",
        ),
        quiet: bool = typer.Option(
            False, "--quiet", help="No progress bar or per-image lines; errors only."
        ),
        input_mpp: float | None = typer.Option(
            None,
            "--input_mpp",
            "--input-mpp",
            help="Resolution of the images (um/px, e.g. 0.25 at 40x); they are resampled to "
            "the model's and all outputs mapped back. Default: at the model's resolution.",
        ),
        proc_mpp: float | None = typer.Option(
            None,
            "--proc_mpp",
            "--proc-mpp",
            help="Resolution to run the network at (um/px); default: the model's.",
        ),
        phases: int | None = typer.Option(
            None,
            "--phases",
            help="Sub-pixel phases the network runs at on images finer than it (1, 2 or 4; "
            "the maps are averaged: finer outlines for that many times the network time). "
            "Default: 1.",
        ),
        colour_features: bool = features_option(),
    ) -> None:
        """Segment image tiles: json/, mat/, overlay/, qupath/ (GeoJSON) and csv/ per image."""
        from hovernet.infer.tile import TileConfig

        opts: InferOptions = ctx.obj
        if not 0 < mem_usage <= 1:
            raise HoverNetError(f"--mem_usage must be a share in (0, 1], got {mem_usage}")
        config = TileConfig(
            inputs=tuple(input_dir),
            output_dir=output_dir,
            batch_size=opts.batch_size,
            precision=opts.precision,
            draw_dot=draw_dot,
            save_raw_map=save_raw_map,
            post_proc_workers=opts.post_proc_workers(at_most=2, at_least=0),
            read_workers=opts.nr_inference_workers,
            mem_usage=mem_usage,
            overwrite=overwrite,
            input_mpp=input_mpp,
            proc_mpp=proc_mpp,
            phases=phases,
            features=colour_features,
        )
        run_and_report(opts, config, quiet=quiet)

    register_wsi(infer_app)
    app.add_typer(infer_app, name="infer")


def run_and_report(opts: InferOptions, config, quiet: bool = False) -> None:
    """Load the model, run the tiles, print a summary; HoverNetError (exit 2) on any failure."""
    from dataclasses import replace

    from hovernet.infer.loading import checkpoint_id, describe_model, load_for_inference
    from hovernet.infer.tile import run_tile
    from hovernet.io.inputs import list_inputs
    from hovernet.progress import Progress

    list_inputs(config.inputs)  # fail on a missing input before loading the model
    load = opts.load_options()
    model, type_info = load_for_inference(load)
    stain_norm = opts.attach_stain_norm(model)
    with Progress(None, "infer tile", unit="patches", quiet=quiet) as bar:
        bar.log(describe_model(model, type_info, load, opts.batch_size))
        model_id = checkpoint_id(load.model_path)
        config = replace(config, type_info=type_info, model_id=model_id, stain_norm=stain_norm)
        summary = run_tile(model, config, log=bar.log, progress=bar)
    if not quiet:
        print(
            f"{len(summary.done)} images, {sum(summary.done.values())} nuclei, "
            f"{summary.n_patches} patches in {summary.wall_s:.1f} s"
            + (f" ({len(summary.skipped)} done before, skipped)" if summary.skipped else "")
            + outputs_note(config.output_dir),
            flush=True,
        )
    if summary.failed:
        # a reader's error names the file already: name it once
        listed = "; ".join(
            why if why.startswith(f"{name}:") else f"{name}: {why}"
            for name, why in summary.failed.items()
        )
        raise HoverNetError(f"{len(summary.failed)} input(s) failed and were skipped: {listed}")
