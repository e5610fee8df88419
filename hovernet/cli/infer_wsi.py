"""`hovernet infer ... wsi ...`: whole-slide inference (see docs/slide.md).

    hovernet infer --model_path=net.tar --batch_size=16 \\
        wsi --input_dir=slides/ --output_dir=out/ --save_thumb --save_mask

Slides are shared between the processes of a `torchrun` job (RANK/WORLD_SIZE) and between the
tasks of a `--shard i/n` job array: each process takes the next unclaimed slide when it is free
(`hovernet.infer.ranks.share_slides`), and each slide is processed by exactly one of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.cli.infer_common import InferOptions, features_option, outputs_note
from hovernet.errors import HoverNetError


def register_wsi(infer_app: typer.Typer) -> None:
    @infer_app.command("wsi")
    def wsi(
        ctx: typer.Context,
        input_dir: str = typer.Option(
            ...,
            "--input_dir",
            "--input-dir",
            help="A slide, a folder of slides, a glob pattern (quoted) or a .txt list file.",
        ),
        output_dir: Path = typer.Option(
            ...,
            "--output_dir",
            "--output-dir",
            help="Folder for each slide's outputs and store (created if missing); rerun with "
            "the same folder to resume.",
        ),
        proc_mpp: float | None = typer.Option(
            None,
            "--proc_mpp",
            "--proc-mpp",
            help="Processing resolution (um/px); default: the model's.",
        ),
        proc_mag: float | None = typer.Option(
            None, "--proc_mag", "--proc-mag", help="Processing magnification (the original's)."
        ),
        slide_mpp: str | None = typer.Option(
            None,
            "--slide_mpp",
            "--slide-mpp",
            help="The slides' um/px (overrides the file's), or auto: estimated from the nuclei "
            "where a file records none.",
        ),
        slide_mag: float | None = typer.Option(
            None, "--slide_mag", "--slide-mag", help="Override the slide's magnification."
        ),
        input_mask_dir: Path | None = typer.Option(
            None,
            "--input_mask_dir",
            "--input-mask-dir",
            help="Folder of tissue masks named like the slides (any image, tissue non-zero).",
        ),
        no_tissue_detection: bool = typer.Option(
            False,
            "--no_tissue_detection",
            "--no-tissue-detection",
            help="Segment the whole slide (no tissue mask): for slides with little glass.",
        ),
        save_mask: bool = typer.Option(
            False, "--save_mask", "--save-mask", help="The tissue mask as <slide>.mask.png."
        ),
        save_thumb: bool = typer.Option(
            False, "--save_thumb", "--save-thumb", help="The thumbnail as <slide>.thumb.png."
        ),
        save_label_map: bool = typer.Option(
            False,
            "--save_label_map",
            "--save-label-map",
            help="Instance and type maps as tiled pyramidal TIFFs.",
        ),
        colour_features: bool = features_option(),
        density_grid_um: float = typer.Option(
            100.0,
            "--density_grid_um",
            "--density-grid-um",
            help="Cell side (um) of the per-class density maps <slide>.density.tif/.png "
            "(nuclei per mm^2 of tissue); 0: none.",
        ),
        shard: str | None = typer.Option(
            None,
            "--shard",
            help="i/n: this is task i of n sharing the slides (job arrays): each task claims the "
            "next free slide in <output_dir>/.claims/ when it is free.",
        ),
        compile_network: bool = typer.Option(
            False,
            "--compile",
            help="torch.compile the network (CUDA; the first batch pays the compilation).",
        ),
        region_size: int = typer.Option(
            3000,
            "--region_size",
            "--region-size",
            help="Region side in the pixels nuclei are outlined at: the processing resolution, "
            "or twice as fine with phases (memory grows with its square).",
        ),
        phases: int | None = typer.Option(
            None,
            "--phases",
            help="Sub-pixel phases the network runs at on slides finer than it (1, 2 or 4; "
            "outlines at twice the processing resolution, for that many times the network "
            "time). Default: 1.",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Redo slides that are finished or partly done."
        ),
        mem_usage: float = typer.Option(
            0.1,
            "--mem_usage",
            "--mem-usage",
            help="Share of memory for network maps waiting for post-processing.",
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        cache_path: str | None = typer.Option(
            None, "--cache_path", "--cache-path", hidden=True, help="The original's; not needed."
        ),
        chunk_shape: int | None = typer.Option(
            None, "--chunk_shape", "--chunk-shape", hidden=True, help="The original's; ignored."
        ),
        tile_shape: int | None = typer.Option(
            None, "--tile_shape", "--tile-shape", hidden=True, help="The original's; ignored."
        ),
    ) -> None:
        """Segment whole-slide images: <slide>.geojson.gz, .json, .csv, .overlay.png and
        .summary.json per slide, from a resumable per-slide SQLite store (<slide>.db)."""
        opts: InferOptions = ctx.obj
        batch_given = _given(ctx, "batch_size")
        if not 0 < mem_usage <= 1:
            raise HoverNetError(f"--mem_usage must be a share in (0, 1], got {mem_usage}")
        if proc_mpp is not None and proc_mag is not None:
            raise HoverNetError("give --proc_mpp or --proc_mag, not both")
        if slide_mpp is not None and slide_mag is not None:
            raise HoverNetError("give --slide_mpp or --slide_mag, not both")
        if input_mask_dir is not None and not input_mask_dir.is_dir():
            raise HoverNetError(f"--input_mask_dir {input_mask_dir} is not a folder")
        request = WsiRequest(
            input_dir,
            output_dir,
            shard,
            dict(
                proc_mpp=proc_mpp,
                proc_mag=proc_mag,
                slide_mpp=_slide_mpp(slide_mpp),
                slide_mag=slide_mag,
                mask_dir=input_mask_dir,
                detect_tissue=not no_tissue_detection,
                save_mask=save_mask,
                save_thumb=save_thumb,
                save_label_map=save_label_map,
                features=colour_features,
                density_grid_um=density_grid_um,
                region_size=region_size,
                overwrite=overwrite,
                quiet=quiet,
                phases=phases,
            ),
            mem_usage,
            batch_given=batch_given,
            compile_network=compile_network,
        )
        run_wsi(opts, request)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` of `hovernet infer` (the parent command) was given, not defaulted."""
    import click

    parent = ctx.parent
    if parent is None or name not in parent.params:
        return True
    return parent.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT


@dataclass(frozen=True)
class WsiRequest:
    """What `hovernet infer wsi` is asked besides the options it shares with `infer tile`."""

    input_dir: str
    output_dir: Path
    shard: str | None
    fields: dict  # SlideConfig's fields from the command line
    mem_usage: float  # share of physical memory for maps waiting for post-processing
    batch_given: bool = True  # --batch_size given (else sized from free CUDA memory)
    compile_network: bool = False


def run_wsi(opts: InferOptions, request: WsiRequest) -> None:
    """List and share out the slides, load the model, run, report; exit 2 if any failed.

    On CUDA without an explicit --batch_size the batch is sized from free device memory."""
    from dataclasses import replace

    from hovernet.infer.engine import physical_memory
    from hovernet.infer.loading import (
        checkpoint_id,
        describe_model,
        load_for_inference,
        model_label,
    )
    from hovernet.infer.ranks import (
        gather,
        init_distributed,
        leave_distributed,
        parse_shard,
        rank_and_world,
        share_slides,
    )
    from hovernet.infer.slide import run_slides
    from hovernet.infer.slide_setup import SlideConfig
    from hovernet.io.atomic import check_writable_dir, remove_empty_dirs
    from hovernet.io.inputs import list_slides

    output_dir = request.output_dir
    slides = list_slides(request.input_dir)
    shard_of = parse_shard(request.shard)
    rank, world = rank_and_world(shard_of)
    distributed = init_distributed()
    created = check_writable_dir(output_dir)  # the claims of a job array live there
    mine = share_slides(slides, output_dir, shard_of, distributed)
    if distributed and opts.device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            opts = replace(opts, device=f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    load = opts.load_options()
    model, type_info = load_for_inference(load)
    stain_norm = opts.attach_stain_norm(model)
    batch_size = _gpu_settings(model, opts, request.batch_given, request.compile_network)
    who = f"rank {rank}/{world}: " if world > 1 else ""
    line = describe_model(model, type_info, load, batch_size)
    shared = "; taken one at a time as ranks free up" if world > 1 else ""
    print(f"{who}{line}; {len(slides)} slides{shared}", flush=True)
    config = SlideConfig(
        output_dir=output_dir,
        batch_size=batch_size,
        precision=opts.precision,
        post_proc_workers=opts.post_proc_workers(at_most=8, at_least=1),
        read_workers=max(1, opts.nr_inference_workers),
        mem_budget=int(request.mem_usage * physical_memory()),
        type_info=type_info,
        model_name=model_label(load.model_path),  # as the demo names it; not the run's identity
        model_id=checkpoint_id(load.model_path),
        stain_norm=stain_norm,
        **request.fields,
    )
    try:
        results = run_slides(model, mine, config, log=_log)
    finally:
        if created:  # a run that wrote nothing leaves no folder behind
            remove_empty_dirs(output_dir)
    if distributed:
        results = gather(results)
        leave_distributed()
    _report(results, output_dir, rank == 0 or not distributed)


def _report(results: list, output_dir: Path, prints: bool) -> None:
    """The closing line (where `prints`: rank 0 of a torchrun job), and a HoverNetError naming
    the slides that failed."""
    failed = [r for r in results if r.status == "failed"]
    done = [r for r in results if r.status == "done"]
    if prints:
        skipped = len(results) - len(done) - len(failed)
        print(
            f"{len(done)} slides done ({sum(r.n_nuclei for r in done)} nuclei), {skipped} "
            f"skipped as finished, {len(failed)} failed" + outputs_note(output_dir),
            flush=True,
        )
    if failed:
        listed = "; ".join(f"{r.name}: {r.reason}" for r in failed)
        raise HoverNetError(f"{len(failed)} slide(s) failed: {listed}")


def _gpu_settings(model, opts: InferOptions, batch_given: bool, compile_network: bool) -> int:
    """The batch size (from free device memory on CUDA unless given), cuDNN's autotuner, and
    the compiled network if asked for."""
    from hovernet.device import model_device
    from hovernet.infer.gpu import compile_for_inference, probe_batch_size

    if model_device(model).type != "cuda":
        if compile_network:
            print("--compile: the network is compiled for CUDA only; running it as it is")
        return opts.batch_size
    import torch

    torch.backends.cudnn.benchmark = True  # one batch shape: the fastest kernels are kept
    batch_size = opts.batch_size
    if not batch_given:
        batch_size = probe_batch_size(model, opts.precision)
        print(f"batch size {batch_size} from free GPU memory (--batch_size to choose)")
    if compile_network:
        compile_for_inference(model)
    return batch_size


def _log(line: str) -> None:
    print(line, flush=True)


def _slide_mpp(text: str | None) -> float | str | None:
    """--slide_mpp: None, "auto" or a positive number of microns per pixel."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise HoverNetError(
            f"--slide_mpp {text!r}: give microns per pixel (e.g. 0.25 at 40x, 0.5 at 20x) or auto"
        )
    return value
