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

import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.errors import HoverNetError
from hovernet.resources import available_cpus


@dataclass(frozen=True)
class InferOptions:
    """The options of `hovernet infer` shared by its sub-commands."""

    model_path: Path | None
    model_mode: str | None = None
    nr_types: int | None = None  # None: from the checkpoint; 0: no type branch
    type_info_path: Path | None = None
    batch_size: int = 8
    nr_inference_workers: int = 1
    nr_post_proc_workers: int | None = None  # None: one per spare core, at most 2
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"
    backend: str = "auto"  # auto, torch or onnxruntime (hovernet.infer.backends)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise HoverNetError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.nr_types is not None and self.nr_types < 0:
            raise HoverNetError(f"--nr_types must be 0 (no types) or more, got {self.nr_types}")
        if self.threads is not None and self.threads < 1:
            raise HoverNetError(f"--threads must be at least 1, got {self.threads}")
        if self.nr_post_proc_workers is not None and self.nr_post_proc_workers < 0:
            raise HoverNetError("--nr_post_proc_workers must be 0 (post-process inline) or more")
        from hovernet.infer.backends import BACKENDS

        if self.backend not in BACKENDS:
            raise HoverNetError(
                f"unknown --backend {self.backend!r}: use one of {', '.join(BACKENDS)}"
            )

    @property
    def post_proc_workers(self) -> int:
        if self.nr_post_proc_workers is not None:
            return self.nr_post_proc_workers
        return min(2, max(0, available_cpus() - 1))


def model_label(opts: InferOptions) -> str:
    """The model's name in messages: its path, or the bundled model's name."""
    if opts.model_path is None:
        from hovernet.model.bundled import BUNDLED_NAME

        return f"{BUNDLED_NAME} (bundled)"
    return str(opts.model_path)


def load_for_inference(opts: InferOptions):
    """(model prepared for inference, type_info) from the options; checks flags vs checkpoint."""
    import torch

    from hovernet.infer.backends import use_backend
    from hovernet.infer.tile import (
        check_type_info,
        default_type_info,
        load_type_info,
        resolve_device,
    )
    from hovernet.model.checkpoints import load_model
    from hovernet.model.inference import prepare_for_inference

    if opts.model_path is None:
        from dataclasses import replace

        from hovernet.model.bundled import BUNDLED_SUMMARY, bundled_model_path

        opts = replace(opts, model_path=bundled_model_path())
        print(f"no --model_path: using {BUNDLED_SUMMARY}", file=sys.stderr, flush=True)
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    model = load_model(opts.model_path, device, mode=opts.model_mode, nr_types=opts.nr_types)
    meta = model.meta
    if opts.type_info_path is not None:
        type_info = load_type_info(opts.type_info_path, model.nr_types)
    elif meta.type_info is not None:
        check_type_info(meta.type_info, model.nr_types, f"type info in {opts.model_path}")
        type_info = meta.type_info
    elif model.nr_types is not None:
        type_info = default_type_info(model.nr_types)
    else:
        type_info = None
    prepare_for_inference(model, channels_last=True)
    use_backend(model, opts.backend, opts.precision, opts.threads, log=_warn)
    return model, type_info


def _describe(model, type_info, opts: InferOptions) -> str:
    from hovernet.infer.backends import backend_of
    from hovernet.infer.tile import autocast_dtype, model_device

    device = model_device(model)
    backend = backend_of(model)
    runner = "PyTorch" if backend is None else backend.describe()
    dtype = autocast_dtype(device, opts.precision)
    types = "no types" if model.nr_types is None else f"{model.nr_types} types"
    names = ""
    if type_info:
        names = " (" + ", ".join(name for i, (name, _) in type_info.items() if i) + ")"
    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    return (
        f"model {model_label(opts)}: {model.mode} mode, {types}{names}; "
        f"{device}, {precision}, batch {opts.batch_size}, {runner}"
    )


def register(app: typer.Typer) -> None:
    infer_app = typer.Typer(
        help="Run a trained HoVer-Net on images (global options first, then a sub-command).",
        no_args_is_help=True,
    )

    @infer_app.callback()
    def infer(
        ctx: typer.Context,
        model_path: Path | None = typer.Option(
            None, "--model_path", "--model-path", help="Checkpoint (original .tar or own .pth)."
        ),
        model_mode: str | None = typer.Option(
            None,
            "--model_mode",
            "--model-mode",
            help="original, fast or lite; read from the checkpoint if left out (checked if given).",
        ),
        nr_types: int | None = typer.Option(
            None,
            "--nr_types",
            "--nr-types",
            help="Type channels incl. background (0 = none); from the checkpoint if left out.",
        ),
        type_info_path: Path | None = typer.Option(
            None,
            "--type_info_path",
            "--type-info-path",
            help="type_info.json of the original (id: name and colour); default: the "
            "checkpoint's, else generated names and colours.",
        ),
        batch_size: int = typer.Option(8, "--batch_size", "--batch-size", help="Patches/batch."),
        nr_inference_workers: int = typer.Option(
            1,
            "--nr_inference_workers",
            "--nr-inference-workers",
            help="Threads reading the next images ahead.",
        ),
        nr_post_proc_workers: int | None = typer.Option(
            None,
            "--nr_post_proc_workers",
            "--nr-post-proc-workers",
            help="Processes for post-processing and writing (0 = inline); default: one per "
            "spare core, at most 2.",
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        gpu: str | None = typer.Option(
            None, "--gpu", hidden=True, help="The original's GPU list: the first id is used."
        ),
        threads: int | None = typer.Option(
            None, "--threads", help="CPU threads for the network (default: the usable cores)."
        ),
        backend: str = typer.Option(
            "auto",
            "--backend",
            help="auto (ONNX Runtime on CPU, PyTorch on CUDA), torch or onnxruntime.",
        ),
        precision: str = typer.Option(
            "auto", "--precision", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."
        ),
    ) -> None:
        if gpu is not None:
            device = f"cuda:{gpu.split(',')[0].strip()}"
        ctx.obj = InferOptions(
            model_path=model_path,
            model_mode=model_mode,
            nr_types=nr_types,
            type_info_path=type_info_path,
            batch_size=batch_size,
            nr_inference_workers=nr_inference_workers,
            nr_post_proc_workers=nr_post_proc_workers,
            device=device,
            threads=threads,
            precision=precision,
            backend=backend,
        )

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
            "Default: 4 on images at least 1.5x finer than the network (--input_mpp), else 1.",
        ),
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
            post_proc_workers=opts.post_proc_workers,
            read_workers=opts.nr_inference_workers,
            mem_usage=mem_usage,
            overwrite=overwrite,
            input_mpp=input_mpp,
            proc_mpp=proc_mpp,
            phases=phases,
        )
        run_and_report(opts, config, quiet=quiet)

    from hovernet.cli.infer_wsi import register_wsi

    register_wsi(infer_app)
    app.add_typer(infer_app, name="infer")


def run_and_report(opts: InferOptions, config, quiet: bool = False) -> None:
    """Load the model, run the tiles, print a summary; HoverNetError (exit 2) on any failure."""
    from dataclasses import replace

    from hovernet.infer.tile import list_inputs, run_tile
    from hovernet.progress import Progress

    list_inputs(config.inputs)  # fail on a missing input before loading the model
    model, type_info = load_for_inference(opts)
    with Progress(None, "infer tile", unit="patches", quiet=quiet) as bar:
        bar.log(_describe(model, type_info, opts))
        summary = run_tile(model, replace(config, type_info=type_info), log=bar.log, progress=bar)
    if not quiet:
        print(
            f"{len(summary.done)} images, {sum(summary.done.values())} nuclei, "
            f"{summary.n_patches} patches in {summary.wall_s:.1f} s"
            + (f" ({len(summary.skipped)} done before, skipped)" if summary.skipped else "")
            + f"; outputs in {config.output_dir}",
            flush=True,
        )
    if summary.failed:
        listed = "; ".join(f"{name}: {why}" for name, why in summary.failed.items())
        raise HoverNetError(f"{len(summary.failed)} input(s) failed and were skipped: {listed}")


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)
