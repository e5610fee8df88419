"""One typed configuration per training run: defaults < YAML file < command-line options.

Defaults are the seed's schedule: Adam, learning rate 1e-4 dropped to 1e-5 after 25 epochs,
50 epochs, batch 8, original mode (270 -> 80). With `--pretrained` the run has the original's
two phases of `epochs` epochs each: the encoder frozen, then all layers (the learning rate and
Adam's state start again at the second phase, as the original builds a new optimiser).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hovernet.errors import HoverNetError
from hovernet.train.losses import MSGE_VARIANTS, LossWeights

CONFIG_NAME = "config.yaml"
VIEWS = ("train", "valid")


@dataclass
class TrainConfig:
    data: list[Path] = field(default_factory=list)  # extract-patches folders, trained together
    out: Path | None = None  # run folder
    arch: str = "original"
    epochs: int = 50  # per phase
    batch: int = 8  # per process (GPU); the global batch is batch x processes
    lr: float = 1.0e-4
    lr_drop_epoch: int = 25  # epoch (counted in the phase) after which lr x lr_drop_factor
    lr_drop_factor: float = 0.1
    weight_decay: float = 0.0
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (and BN
    # statistics), updated every step; validation, best.pth and last.pth's model are the average
    pretrained: Path | None = None  # ImageNet encoder weights (local file)
    init: Path | None = None  # whole-model checkpoint to start from (fine-tuning); "bundled"
    freeze_encoder: bool | None = None  # None: a frozen-encoder phase first when pretrained
    loss_weights: dict[str, float] = field(default_factory=dict)  # term -> weight overrides
    msge_variant: str = "paper"
    class_weights: list[float] | None = None  # per type id, for the type cross-entropy
    balance_classes: bool = False  # the class-balanced sampler (typed data)
    augment: bool = True  # False: centre crops, no augmentation (overfitting checks)
    stain_jitter: float = 0.0  # HED colour jitter strength (data/augment.py), 0 = off
    steps_per_epoch: int | None = None  # None: one pass over the data; N: N steps, with replacement
    time_limit: float | None = None  # minutes; stop cleanly (resumable) when spent
    stop_after_steps: int | None = None  # stop (resumable) after this many steps of this call
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto = bf16 (or fp16) on CUDA, bf16 on CPUs with AMX, else fp32
    channels_last: bool = True  # on CUDA
    workers: int | None = None  # DataLoader workers; None = CPUs available - 1 (at most 8)
    gpu: str | None = None  # "0,1": one process per listed GPU
    sync_bn: bool = False
    mpp: float | None = None  # microns per pixel of the training images, recorded in checkpoints
    valid_every: int = 1  # epochs between validations (0 = never)
    valid_patches: int | None = None  # validation patches for the patch figures (None = all)
    valid_images: int = 32  # validation patches scored through tile inference (PQ, AJI...)
    valid_crop: int = 256  # centre crop of each such patch, pixels
    resume: bool = False
    overwrite: bool = False
    view: str | None = None
    view_n: int = 8
    tensorboard: bool = True
    quiet: bool = False

    @property
    def weights(self) -> LossWeights:
        return LossWeights(**self.loss_weights)


_PATH_FIELDS = {"out", "pretrained", "init"}


def _normalise_key(key: str) -> str:
    return key.replace("-", "_")


def config_from_dict(raw: dict[str, Any], source: str = "config") -> TrainConfig:
    """A TrainConfig from plain values (YAML), checked."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _normalise_key(str(key))
        if name not in names:
            raise HoverNetError(
                f"{source}: unknown setting {key!r}; known settings: {', '.join(sorted(names))}"
            )
        values[name] = value
    return check_config(_coerce(TrainConfig(**values)), source)


def _coerce(cfg: TrainConfig) -> TrainConfig:
    if isinstance(cfg.data, (str, Path)):
        cfg.data = [cfg.data]
    cfg.data = [Path(p) for p in cfg.data]
    for name in _PATH_FIELDS:
        value = getattr(cfg, name)
        if value is not None:
            setattr(cfg, name, Path(value))
    if cfg.gpu is not None:
        cfg.gpu = str(cfg.gpu)
    return cfg


def check_config(cfg: TrainConfig, source: str = "config") -> TrainConfig:
    """Raise HoverNetError naming the setting for values that cannot work."""
    positive = {"epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.lr}
    for name, value in positive.items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise HoverNetError(f"{source}: {name} must be a positive number, got {value!r}")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise HoverNetError(f"{source}: steps_per_epoch must be at least 1")
    if cfg.time_limit is not None and cfg.time_limit <= 0:
        raise HoverNetError(f"{source}: time_limit must be a positive number of minutes")
    if not (isinstance(cfg.ema_decay, (int, float)) and 0.0 <= cfg.ema_decay < 1.0):
        raise HoverNetError(
            f"{source}: ema_decay must be in [0, 1) (0 = off; 0.99-0.9999 are usual), "
            f"got {cfg.ema_decay!r}"
        )
    if not (isinstance(cfg.stain_jitter, (int, float)) and 0.0 <= cfg.stain_jitter < 1.0):
        raise HoverNetError(
            f"{source}: stain_jitter must be in [0, 1) (0 = off; 0.1-0.3 are light to strong), "
            f"got {cfg.stain_jitter!r}"
        )
    if cfg.msge_variant not in MSGE_VARIANTS:
        raise HoverNetError(
            f"{source}: msge_variant {cfg.msge_variant!r}: use one of {', '.join(MSGE_VARIANTS)}"
        )
    if cfg.view is not None and cfg.view not in VIEWS:
        raise HoverNetError(f"{source}: view {cfg.view!r}: use train or valid")
    if cfg.init is not None and cfg.pretrained is not None:
        raise HoverNetError(
            f"{source}: init and pretrained both give starting weights: pass one of them"
        )
    if cfg.mpp is not None and not cfg.mpp > 0:
        raise HoverNetError(f"{source}: mpp must be a positive number of microns per pixel")
    try:
        cfg.weights  # noqa: B018 - validates the term names
    except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(LossWeights))
        raise HoverNetError(
            f"{source}: loss_weights has unknown terms {sorted(cfg.loss_weights)}; use {known}"
        ) from None
    return cfg


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HoverNetError(f"config file {path} does not exist: check the --config path")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise HoverNetError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise HoverNetError(f"{path} must hold a mapping of settings (key: value)")
    return raw


def resolve_config(yaml_path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the YAML file, then every override that is not None."""
    raw: dict[str, Any] = load_yaml(yaml_path) if yaml_path is not None else {}
    raw = {_normalise_key(str(k)): v for k, v in raw.items()}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            value = {**raw[key], **value}  # a mapping (loss_weights): its keys over the file's
        if value is not None and value != []:
            raw[key] = value
    return config_from_dict(raw, str(yaml_path) if yaml_path else "command line")


def _absolute(path: Path | str) -> str:
    """`path` made absolute against the current folder (symbolic links kept), as text."""
    return os.path.abspath(os.path.expanduser(str(path)))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain values for YAML, JSON and checkpoints; paths absolute (against the current folder),
    so that a run's config.yaml still finds its data when `--resume` runs from another folder.
    `init: bundled` (the bundled model, not a path) stays as it is."""
    out = dataclasses.asdict(cfg)
    out["data"] = [_absolute(p) for p in cfg.data]
    for name in _PATH_FIELDS:
        value = getattr(cfg, name)
        if value is not None:
            out[name] = (
                "bundled" if name == "init" and str(value) == "bundled" else _absolute(value)
            )
    return out


def config_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def resolution_warning(cfg: TrainConfig) -> str | None:
    """One line when the run records no resolution (no `mpp`), else None.

    Without it the checkpoints cannot say what um/px they expect: slide mode (`hovernet infer
    ... wsi`) then refuses to run without `--proc_mpp`, and tile mode's `--input_mpp` is refused,
    since neither can match new images to the model; the validation's post-processing also runs
    with its constants unscaled."""
    if cfg.mpp is not None:
        return None
    return (
        "no --mpp: the checkpoints will not record the training images' resolution, so slide "
        "mode (hovernet infer ... wsi) and --input_mpp cannot match new images to the model (they "
        "will ask for --proc_mpp); pass --mpp with the images' microns per pixel (0.25 at 40x, "
        "0.5 at 20x; also accepted with --resume)"
    )
