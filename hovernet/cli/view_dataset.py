"""`hovernet view-dataset`: a PNG grid of augmented training samples, to check the pipeline by eye.

One row per sample: the network input (the output window outlined), the NP target, the HV
target's horizontal and vertical channels (blue -1, white 0, red +1) and, for typed data, the
type map over the image. Target panels show the output window enlarged to the panel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from hovernet.errors import HoverNetError


@dataclass(frozen=True)
class ViewDatasetConfig:
    dataset_dir: Path
    out: Path
    n: int = 16
    seed: int = 0
    mode: str = "original"
    split: str = "train"
    augment: bool = True
    mpp: float | None = None  # the training run's resolution: HV targets made as it makes them


def run(cfg: ViewDatasetConfig, quiet: bool = True) -> Path:
    import cv2

    from hovernet.config import geometry_for
    from hovernet.data.dataset import PatchDataset, read_type_info
    from hovernet.data.preview import render_grid
    from hovernet.data.targets import min_size_for_mpp
    from hovernet.io.atomic import atomic_path, check_writable_file
    from hovernet.progress import Progress

    if cfg.n < 1:
        raise HoverNetError(f"--n must be at least 1, got {cfg.n}")
    if cfg.out.suffix.lower() != ".png":
        raise HoverNetError(f"--out {cfg.out} must end in .png")
    check_writable_file(cfg.out, "grid PNG (--out)")
    geometry = geometry_for(cfg.mode)
    dataset = PatchDataset.from_folder(
        cfg.dataset_dir, cfg.split, geometry=geometry, augment=cfg.augment, seed=cfg.seed
    )
    dataset.hv_min_size = min_size_for_mpp(cfg.mpp)
    samples = []
    with Progress(cfg.n, "view-dataset", unit="samples", quiet=quiet) as bar:
        for i in range(cfg.n):
            samples.append(dataset.sample_arrays(i % len(dataset)))
            bar.advance()
    grid = render_grid(samples, geometry.margin, read_type_info(cfg.dataset_dir))
    with atomic_path(cfg.out) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise HoverNetError(f"could not write {cfg.out}: check the folder is writable")
    return cfg.out


def register(app: typer.Typer) -> None:
    @app.command("view-dataset")
    def view_dataset(
        dataset_dir: Path = typer.Argument(..., help="Folder written by extract-patches."),
        n: int = typer.Option(16, "--n", help="Number of samples (rows)."),
        out: Path = typer.Option(Path("dataset_grid.png"), "--out", help="PNG to write."),
        seed: int = typer.Option(0, "--seed", help="Random seed of the augmentation."),
        mode: str = typer.Option(
            "original",
            "--mode",
            "--model-mode",
            "--model_mode",
            help="original, fast, lite, lite-wide or lite-deep.",
        ),
        split: str = typer.Option("train", "--split", help="train or valid."),
        no_augment: bool = typer.Option(
            False, "--no-augment", help="Show centre crops without augmentation."
        ),
        mpp: float | None = typer.Option(
            None,
            "--mpp",
            help="Microns per pixel the patches will be trained at (as `hovernet train --mpp`): "
            "small nuclei get their HV targets as that run gives them.",
        ),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Write a PNG grid of augmented samples: image, NP, HV and type targets."""
        cfg = ViewDatasetConfig(dataset_dir, out, n, seed, mode, split, not no_augment, mpp)
        path = run(cfg, quiet=quiet)
        typer.echo(f"wrote {path} ({cfg.n} samples, {cfg.mode} geometry)")
