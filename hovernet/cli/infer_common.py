"""What `hovernet infer tile` and `hovernet infer wsi` share: the options given before the
sub-command (`InferOptions`) and the `hovernet infer` group that parses them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.errors import HoverNetError
from hovernet.resources import spare_cpus


@dataclass(frozen=True)
class InferOptions:
    """The options of `hovernet infer` shared by its sub-commands."""

    model_path: Path | None
    model_mode: str | None = None
    nr_types: int | None = None  # None: from the checkpoint; 0: no type branch
    type_info_path: Path | None = None
    batch_size: int = 8
    nr_inference_workers: int = 1
    nr_post_proc_workers: int | None = None  # None: the sub-command's default
    device: str = "auto"
    threads: int | None = None
    precision: str = "auto"
    backend: str = "auto"  # auto, torch or onnxruntime (hovernet.infer.backends)
    stain_norm: Path | None = None  # reference image of --stain_norm (Reinhard)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise HoverNetError(f"--batch_size must be at least 1, got {self.batch_size}")
        if self.nr_post_proc_workers is not None and self.nr_post_proc_workers < 0:
            raise HoverNetError("--nr_post_proc_workers must be 0 (post-process inline) or more")
        self.load_options()  # checks the model options

    def load_options(self):
        """The options that choose and load the model (`hovernet.infer.loading.LoadOptions`)."""
        from hovernet.infer.loading import LoadOptions

        return LoadOptions(
            model_path=self.model_path,
            model_mode=self.model_mode,
            nr_types=self.nr_types,
            type_info_path=self.type_info_path,
            device=self.device,
            threads=self.threads,
            precision=self.precision,
            backend=self.backend,
        )

    def attach_stain_norm(self, model) -> str | None:
        """--stain_norm REF: fit Reinhard's statistics on REF once and set `model.stain_norm`
        (applied to each tile or slide region before the network: `predict_stream`); returns
        the statistics as text for the run's identity (None without the option)."""
        if self.stain_norm is None:
            return None
        from functools import partial

        from hovernet.data.stain import reinhard_apply, reinhard_fit

        params = reinhard_fit(read_reference(self.stain_norm))
        model.stain_norm = partial(reinhard_apply, params=params)
        mean, std = ("/".join(f"{v:.2f}" for v in row) for row in params)
        return f"reinhard LAB mean {mean} std {std}"

    def post_proc_workers(self, at_most: int, at_least: int) -> int:
        """--nr_post_proc_workers, else one per spare core within [at_least, at_most]."""
        if self.nr_post_proc_workers is not None:
            return self.nr_post_proc_workers
        return spare_cpus(at_most, at_least)


def read_reference(path: Path):
    """The --stain_norm reference as RGB uint8, or one HoverNetError naming the flag."""
    from hovernet.io.slides import read_rgb

    try:
        return read_rgb(path)
    except (HoverNetError, OSError, ValueError) as error:
        raise HoverNetError(
            f"--stain_norm {path}: cannot use it as the reference H&E image ({error}); "
            "pass a readable PNG/JPEG/TIFF of well-stained tissue"
        ) from None


def features_option() -> bool:
    """--colour_features / --no_colour_features of `hovernet infer tile` and `... wsi`."""
    return typer.Option(
        True,
        "--colour_features/--no_colour_features",
        "--colour-features/--no-colour-features",
        help="Per-nucleus haematoxylin and eosin optical density of the nucleus and of a 2 um "
        "ring of cytoplasm, and haematoxylin texture, in the CSV and GeoJSON (see "
        "docs/outputs.md); --no_colour_features: shape only, faster post-processing.",
    )


def outputs_note(folder: Path) -> str:
    """ "; outputs in <folder>" for the last line of a run, or "" when the folder holds no file
    (it was never made, or the run wrote nothing there)."""
    has_files = folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))
    return f"; outputs in {folder}" if has_files else ""


def infer_group() -> typer.Typer:
    """The `hovernet infer` group: its callback parses the shared options into ctx.obj."""
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
            help="original, fast, lite, lite-wide or lite-deep; read from the checkpoint if "
            "left out (checked if given).",
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
            "spare core (tile: at most 2, wsi: at most 8).",
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
            help="auto (= torch: measured as fast as ONNX Runtime end to end), torch or "
            "onnxruntime (CPU, fp32; its ONNX export is cached in ~/.cache/hovernet/onnx or "
            "$HOVERNET_CACHE/onnx).",
        ),
        precision: str = typer.Option(
            "auto",
            "--precision",
            help="auto (CUDA: bf16, fp16 on GPUs without bf16; CPU: bf16 where it computes bf16 "
            "natively, AMX or AVX-512 BF16, detected at run time, else fp32), fp32, bf16 or fp16.",
        ),
        stain_norm: Path | None = typer.Option(
            None,
            "--stain_norm",
            "--stain-norm",
            help="Reference H&E image: each tile (slide: each region) is colour-normalised to "
            "it (Reinhard, LAB mean/std of tissue) before the network; outputs and colour "
            "features keep the original pixels. See docs/inference.md.",
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
            stain_norm=stain_norm,
        )

    return infer_app
