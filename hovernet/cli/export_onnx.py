"""`hovernet export-onnx`: a checkpoint -> an ONNX model for deployment elsewhere.

The file holds the network with BatchNorm folded into the convolutions (input `image`,
N x 3 x S x S float32 RGB in 0..255, N free; outputs the logits `np`, `hv` and `tp`) and, in its
metadata_props, the mode, number of types, type names/colours and mpp as JSON values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.errors import HoverNetError


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Path
    output: Path
    type_info: Path | None = None  # overrides the checkpoint's type names and colours
    mpp: float | None = None  # overrides the checkpoint's mpp


def run_export(cfg: ExportConfig) -> str:
    """Export and write atomically; returns a one-line summary."""
    from hovernet.io.type_info import check_type_info, load_type_info
    from hovernet.model.checkpoints import load_model
    from hovernet.model.inference import prepare_for_inference
    from hovernet.model.onnx_export import write_onnx

    if cfg.output.resolve() == cfg.checkpoint.resolve():
        raise HoverNetError(f"output {cfg.output} is the checkpoint: choose another output path")
    if cfg.mpp is not None and not cfg.mpp > 0:
        raise HoverNetError(f"--mpp must be a positive number of microns per pixel, got {cfg.mpp}")
    start = time.perf_counter()
    model = load_model(cfg.checkpoint)
    meta = model.meta
    if cfg.type_info is not None:
        type_info = load_type_info(cfg.type_info, model.nr_types)
    else:
        type_info = meta.type_info
        if type_info is not None:
            check_type_info(type_info, model.nr_types, f"type info in {cfg.checkpoint}")
    mpp = cfg.mpp if cfg.mpp is not None else meta.mpp
    prepare_for_inference(model, channels_last=False)
    size = write_onnx(cfg.output, model, type_info=type_info, mpp=mpp)
    g = model.geometry
    return (
        f"wrote {cfg.output} ({model.mode} mode, nr_types={model.nr_types}, "
        f"type_info={'yes' if type_info else 'no'}, mpp={mpp}; {size / 1e6:.0f} MB) in "
        f"{time.perf_counter() - start:.1f} s: input 'image' N x 3 x {g.input_size} x "
        f"{g.input_size} float RGB 0..255, outputs {', '.join(_outputs(model))} "
        f"(logits, N x C x {g.output_size} x {g.output_size})"
    )


def _outputs(model) -> list[str]:
    from hovernet.model.onnx_export import output_names

    return output_names(model)


def register(app: typer.Typer) -> None:
    @app.command("export-onnx")
    def export_onnx(
        checkpoint: Path = typer.Argument(..., help="checkpoint (original .tar or own .pth)"),
        output: Path = typer.Argument(..., help="ONNX file to write (.onnx)"),
        type_info: Path | None = typer.Option(
            None,
            "--type-info",
            "--type_info",
            help="type_info.json recorded in the file (default: the checkpoint's)",
        ),
        mpp: float | None = typer.Option(
            None, "--mpp", help="microns per pixel recorded in the file (default: the checkpoint's)"
        ),
    ) -> None:
        """Export a checkpoint to ONNX (opset 17, dynamic batch) with mode, types and mpp."""
        print(run_export(ExportConfig(checkpoint, output, type_info, mpp)), flush=True)
