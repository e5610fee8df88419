"""`hovernet train`: train a model on extract-patches folders (see docs/training.md)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from hovernet.errors import HoverNetError


def _arch_for_img(img: int, arch: str | None) -> str:
    from hovernet.model.registry import ARCHITECTURES

    matching = [n for n, a in ARCHITECTURES.items() if a.geometry.input_size == img]
    if arch is not None:
        size = ARCHITECTURES[arch].geometry.input_size if arch in ARCHITECTURES else None
        if size is not None and size != img:
            raise HoverNetError(f"--img {img} does not fit --arch {arch} (input {size} px)")
        return arch
    if not matching:
        sizes = ", ".join(f"{n} {a.geometry.input_size}" for n, a in ARCHITECTURES.items())
        raise HoverNetError(f"--img {img}: no architecture takes {img} px input ({sizes})")
    return matching[0]


def _warnings(cfg) -> list[str]:
    """What the run will silently lack: a recorded resolution, classes in the validation."""
    from hovernet.train.config import resolution_warning
    from hovernet.train.data import validation_class_warning

    lines = [resolution_warning(cfg), validation_class_warning(cfg.data, cfg.valid_patches)]
    return [line for line in lines if line]


def _loss_weights(text: str) -> dict[str, float]:
    """`--loss-weights tp_focal=1,tp_dice=0` as {term: weight}; the terms are checked later."""
    weights = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise HoverNetError(
                f"--loss-weights {text!r}: give TERM=NUMBER pairs separated by commas, "
                "e.g. tp_focal=1,tp_dice=0"
            ) from None
    return weights


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        data: list[Path] = typer.Option(
            None, "--data", help="Folder written by extract-patches; repeat to train on several."
        ),
        out: Path = typer.Option(None, "--out", help="Run folder (checkpoints, metrics, plots)."),
        config: Path | None = typer.Option(None, "--config", help="YAML run configuration."),
        arch: str | None = typer.Option(
            None, "--arch", help="original, fast, lite, lite-wide or lite-deep."
        ),
        epochs: int | None = typer.Option(None, "--epochs", help="Epochs (per phase)."),
        batch: int | None = typer.Option(None, "--batch", "--batch-size", help="Batch per GPU."),
        img: int | None = typer.Option(None, "--img", help="Network input size (picks --arch)."),
        lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 1e-4)."),
        gpu: str | None = typer.Option(None, "--gpu", help="GPUs, e.g. 0,1: one process each."),
        view: str | None = typer.Option(
            None, "--view", help="train or valid: write the batch grid PNG and exit."
        ),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Start --out afresh."),
        pretrained: Path | None = typer.Option(
            None, "--pretrained", help="ImageNet encoder weights (local file)."
        ),
        init: Path | None = typer.Option(
            None,
            "--init",
            help="Start from this model checkpoint (fine-tuning); 'bundled' = the bundled model.",
        ),
        freeze_encoder: bool | None = typer.Option(
            None,
            "--freeze-encoder/--no-freeze-encoder",
            help="A first phase with the encoder frozen (default: with --pretrained).",
        ),
        mpp: float | None = typer.Option(
            None, "--mpp", help="Microns per pixel of the training images, recorded."
        ),
        time_limit: float | None = typer.Option(
            None, "--time-limit", help="Minutes; stop cleanly (resumable) when spent."
        ),
        steps_per_epoch: int | None = typer.Option(
            None, "--steps-per-epoch", help="Steps per epoch (draws with replacement)."
        ),
        ema: float | None = typer.Option(
            None, "--ema", help="Decay of a moving average of the weights, e.g. 0.999 (0 = off)."
        ),
        class_weights: str | None = typer.Option(
            None, "--class-weights", help="Type cross-entropy weight per type id, e.g. 1,1,4."
        ),
        loss_weights: str | None = typer.Option(
            None,
            "--loss-weights",
            help="Loss term weights, e.g. tp_focal=1,tp_dice=0 (terms: docs/training.md).",
        ),
        balance_classes: bool = typer.Option(
            False, "--balance-classes", help="Class-balanced sampling of typed patches."
        ),
        stain_jitter: float | None = typer.Option(
            None, "--stain-jitter", help="HED colour jitter strength, e.g. 0.2 (default 0 = off)."
        ),
        msge: str | None = typer.Option(
            None, "--msge", help="paper (dh/dx, dv/dy) or original (the original code's)."
        ),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1."),
        precision: str | None = typer.Option(None, "--precision", help="auto, fp32, bf16, fp16."),
        workers: int | None = typer.Option(None, "--workers", help="DataLoader workers."),
        seed: int | None = typer.Option(None, "--seed", help="Random seed."),
        valid_images: int | None = typer.Option(
            None, "--valid-images", help="Validation patches scored by PQ (0 = none)."
        ),
        valid_patches: int | None = typer.Option(
            None, "--valid-patches", help="Validation patches for loss/Dice (default all)."
        ),
        no_augment: bool = typer.Option(
            False, "--no-augment", help="Centre crops without augmentation."
        ),
        sync_bn: bool = typer.Option(False, "--sync-bn", help="SyncBatchNorm across GPUs."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or epoch lines."),
    ) -> None:
        """Train HoVer-Net on patch folders: checkpoints, metrics.jsonl, plots, TensorBoard."""
        from hovernet.train.config import CONFIG_NAME, resolve_config
        from hovernet.train.launch import launch

        if img is not None:
            arch = _arch_for_img(img, arch)
        weights = None
        if class_weights is not None:
            try:
                weights = [float(w) for w in class_weights.split(",")]
            except ValueError:
                raise HoverNetError(
                    f"--class-weights {class_weights!r}: give numbers separated by commas"
                ) from None
        overrides = dict(
            loss_weights=None if loss_weights is None else _loss_weights(loss_weights),
            data=data or None, out=out, arch=arch, epochs=epochs, batch=batch, lr=lr, gpu=gpu,
            view=view, pretrained=pretrained, init=init, freeze_encoder=freeze_encoder, mpp=mpp,
            time_limit=time_limit, steps_per_epoch=steps_per_epoch, msge_variant=msge,
            ema_decay=ema, device=device, precision=precision, workers=workers, seed=seed,
            valid_images=valid_images, valid_patches=valid_patches,
            augment=False if no_augment else None, resume=resume or None,
            overwrite=overwrite or None,
            balance_classes=balance_classes or None, class_weights=weights,
            stain_jitter=stain_jitter,
            sync_bn=sync_bn or None, quiet=quiet or None,
        )  # fmt: skip
        yaml_path = config
        if yaml_path is None and resume and out is not None and (out / CONFIG_NAME).is_file():
            yaml_path = out / CONFIG_NAME  # resume with the run's own settings
        cfg = resolve_config(yaml_path, overrides)
        if resume and yaml_path == out / CONFIG_NAME:
            cfg.overwrite, cfg.view = False, view
        if cfg.out is None:
            raise HoverNetError("no run folder: pass --out RUN")
        if not cfg.data:
            raise HoverNetError(
                "no training data: pass --data DATASET (a folder from extract-patches)"
            )
        if cfg.view is not None:
            from hovernet.train.view import write_view

            typer.echo(f"wrote {write_view(cfg)}")
            return
        if os.environ.get("RANK", "0") == "0":  # torchrun: every process runs this command
            for line in _warnings(cfg):
                typer.echo(f"warning: {line}", err=True)
        result = launch(cfg)
        if result is not None:
            how = {"done": "finished", "time": "stopped at the time limit (resume with --resume)"}
            typer.echo(
                f"{how.get(result.stopped, result.stopped)}: {result.state.epoch} epochs, "
                f"{result.state.global_step} steps; checkpoints in {result.run_dir}"
            )
