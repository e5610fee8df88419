"""`hovernet convert-checkpoint`: TF .npz or original PyTorch checkpoint -> own format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.errors import HoverNetError
from hovernet.io.type_info import load_type_info


@dataclass(frozen=True)
class ConvertConfig:
    src: Path
    dst: Path
    type_info: Path | None = None
    mpp: float | None = None


def run_convert(cfg: ConvertConfig) -> str:
    """Convert and write; returns a one-line summary."""
    from hovernet.io.atomic import check_writable_file
    from hovernet.model.checkpoints import load_model, save_checkpoint
    from hovernet.model.convert import convert_npz

    if cfg.dst.resolve() == cfg.src.resolve():
        raise HoverNetError(f"output {cfg.dst} is the input file: choose another output path")
    check_writable_file(cfg.dst, "output checkpoint")
    type_info = load_type_info(cfg.type_info) if cfg.type_info is not None else None
    if cfg.src.suffix == ".npz":
        model, unused = convert_npz(cfg.src, cfg.dst, type_info=type_info, mpp=cfg.mpp)
        extra = f"; {len(unused)} TF variables not used" if unused else ""
    else:
        model = load_model(cfg.src)
        meta = model.meta
        save_checkpoint(
            cfg.dst,
            model,
            type_info=type_info if type_info is not None else meta.type_info,
            mpp=cfg.mpp if cfg.mpp is not None else meta.mpp,
        )
        extra = ""
    return (
        f"wrote {cfg.dst} ({model.mode} mode, nr_types={model.nr_types}, "
        f"type_info={'yes' if type_info else 'no'}, mpp={cfg.mpp}){extra}"
    )


def register(app: typer.Typer) -> None:
    @app.command("convert-checkpoint")
    def convert_checkpoint(
        src: Path = typer.Argument(
            ..., help="original TensorFlow checkpoint (.npz) or PyTorch checkpoint (.tar/.pth)"
        ),
        dst: Path = typer.Argument(..., help="output checkpoint (.pth)"),
        type_info: Path | None = typer.Option(
            None,
            "--type-info",
            "--type_info",
            help="type_info.json with class names and colours, recorded in the output",
        ),
        mpp: float | None = typer.Option(
            None, "--mpp", help="microns per pixel the model was trained at, recorded"
        ),
    ) -> None:
        """Convert a checkpoint to this project's format (records mode, types, colours, mpp)."""
        print(run_convert(ConvertConfig(src, dst, type_info, mpp)))
