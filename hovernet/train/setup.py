"""What a training run decides before its first step: `prepare_training(cfg, dist)` opens the
process group, the device and the run folder, loads the data, builds the model, its optimiser and
the sample loader, and returns them as one `TrainSetup` with the `TrainState` to start from (the
resumed one with `cfg.resume`). `hovernet.train.loop` then runs the epochs.

A bad `--init` / `--pretrained` path is refused before the run folder exists, so it leaves
nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hovernet.device import autocast_dtype, resolve_device
from hovernet.errors import HoverNetError
from hovernet.io.atomic import write_text_atomic
from hovernet.model.registry import build_model, get_architecture
from hovernet.resources import spare_cpus
from hovernet.train.config import CONFIG_NAME, TrainConfig, config_yaml
from hovernet.train.data import (
    EpochSampler,
    SeededConcat,
    TrainingData,
    balanced_weights,
    load_training_data,
)
from hovernet.train.state import (
    Dist,
    TrainParts,
    TrainState,
    load_run_checkpoint,
    make_ema,
    prepare_run_folder,
    truncate_metrics,
)


@dataclass(frozen=True)
class TrainSetup:
    """One run's fixed parts: `parts` (model, optimiser, device; the optimiser is replaced when
    the second phase starts), its data, run folder, loader and epoch sampler, the loader's
    worker count, and the TensorBoard writer (rank 0 with `cfg.tensorboard`, else None)."""

    parts: TrainParts
    data: TrainingData
    run: Path
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    workers: int
    writer: Any = None

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, not {self.workers}")

    @property
    def phases(self) -> int:
        return n_phases(self.parts.cfg)

    @property
    def total_epochs(self) -> int:
        return self.parts.cfg.epochs * self.phases


def prepare_training(cfg: TrainConfig, dist: Dist) -> tuple[TrainSetup, TrainState]:
    """Process group, device, run folder, data, model, optimiser, loader; the state to start
    from. Rank 0 writes the run's config.yaml and logs one line saying what will run."""
    device, init_path, run = _open_run(cfg, dist)
    torch.manual_seed(cfg.seed)
    geometry = get_architecture(cfg.arch).geometry
    data = load_training_data(cfg.data, geometry, cfg.seed, cfg.augment, cfg.stain_jitter, cfg.mpp)
    parts = _make_parts(cfg, dist, device, data, init_path)
    state = TrainState()
    if cfg.resume:
        state = load_run_checkpoint(run / "last.pth", parts)
        if dist.main:
            truncate_metrics(run / "metrics.jsonl", state.epoch)
    if dist.main:
        write_text_atomic(run / CONFIG_NAME, config_yaml(cfg))
    loader, sampler, workers = _make_loader(cfg, dist, data, device)
    writer = _tensorboard(cfg, run) if dist.main else None
    setup = TrainSetup(parts, data, run, loader, sampler, workers, writer)
    amp = parts.amp_dtype
    log(
        cfg,
        dist,
        f"training {cfg.arch} (nr_types={data.nr_types}) on {len(loader.dataset)} patches from "
        f"{len(cfg.data)} folder(s), {sampler.steps} steps/epoch x {setup.total_epochs} epochs, "
        f"batch {cfg.batch} x {dist.world} process(es), {device}, "
        f"{'fp32' if amp is None else str(amp).split('.')[-1]}, {workers} workers",
    )
    return setup, state


def pick_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if device.type == "cuda":
        if device.index is None:  # "cuda" alone: the current device, with its index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def n_phases(cfg: TrainConfig) -> int:
    freeze = cfg.freeze_encoder if cfg.freeze_encoder is not None else cfg.pretrained is not None
    return 2 if freeze else 1


def make_optimizer(cfg: TrainConfig, net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def log(cfg: TrainConfig, dist: Dist, line: str) -> None:
    if dist.main and not cfg.quiet:
        print(line, flush=True)


def _open_run(cfg: TrainConfig, dist: Dist) -> tuple[torch.device, Path | None, Path]:
    """The process group, the device, the checked `--init` path and the run folder."""
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, rank=dist.rank, world_size=dist.world)
    device = pick_device(cfg, dist)
    autocast_dtype(device, cfg.precision)  # refuses an unknown precision before the run folder
    init_path = _init_path(cfg)  # before the run folder exists: a bad path leaves nothing
    if cfg.pretrained is not None and not cfg.resume:
        from hovernet.model.pretrained import check_weights_file

        check_weights_file(cfg.pretrained)
    run = prepare_run_folder(cfg) if dist.main else cfg.out
    if dist.world > 1:
        torch.distributed.barrier()
    return device, init_path, run


def _init_path(cfg: TrainConfig) -> Path | None:
    """The checkpoint `cfg.init` names ("bundled": the package's), checked to exist."""
    if cfg.init is None or cfg.resume:
        return None
    if str(cfg.init) == "bundled":
        from hovernet.model.bundled import bundled_model_path

        return bundled_model_path()
    if not Path(cfg.init).is_file():
        raise HoverNetError(f"--init {cfg.init}: no such file; pass a checkpoint or 'bundled'")
    from hovernet.model.checkpoints import checkpoint_architecture

    mode, _ = checkpoint_architecture(cfg.init)  # a broken file is refused before the run folder
    if mode != get_architecture(cfg.arch).name:
        raise HoverNetError(
            f"--init {cfg.init} holds a {mode} network but this run trains {cfg.arch}: pass "
            f"--arch {mode} or another checkpoint"
        )
    return Path(cfg.init)


def _make_parts(
    cfg: TrainConfig, dist: Dist, device: torch.device, data: TrainingData, init: Path | None
) -> TrainParts:
    """The model (encoder weights / `--init` checkpoint loaded, on `device`), its optimiser,
    precision, moving average and class weights."""
    amp_dtype = autocast_dtype(device, cfg.precision)
    net = build_model(cfg.arch, data.nr_types)
    if cfg.pretrained is not None and not cfg.resume:
        from hovernet.model.pretrained import load_encoder_weights

        log(cfg, dist, f"encoder: {load_encoder_weights(net, cfg.pretrained).summary()}")
    if init is not None:
        from hovernet.model.checkpoints import init_from_checkpoint

        log(cfg, dist, f"starting from {init_from_checkpoint(net, init, cfg.mpp)}")
    if cfg.sync_bn and dist.world > 1:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return TrainParts(
        cfg=cfg,
        dist=dist,
        device=device,
        net=net,
        optimizer=make_optimizer(cfg, net),
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        ema=make_ema(net, cfg.ema_decay),
        class_weights=_class_weights(cfg, data.nr_types),
        type_info=data.type_info,
    )


def _class_weights(cfg: TrainConfig, nr_types: int | None) -> torch.Tensor | None:
    if not cfg.class_weights:
        return None
    if nr_types is None or len(cfg.class_weights) != nr_types:
        raise HoverNetError(
            f"class_weights has {len(cfg.class_weights)} values but the model has "
            f"{nr_types or 0} types (background included): give one per type id"
        )
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def _make_loader(
    cfg: TrainConfig, dist: Dist, data: TrainingData, device: torch.device
) -> tuple[torch.utils.data.DataLoader, EpochSampler, int]:
    """The training loader over every folder, its epoch sampler and its worker count."""
    train_set = SeededConcat(data.train)
    weights = balanced_weights(data.train) if cfg.balance_classes else None
    sampler = EpochSampler(len(train_set), cfg.batch, cfg.seed, dist, cfg.steps_per_epoch, weights)
    workers = spare_cpus(8, at_least=0) if cfg.workers is None else cfg.workers
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=cfg.batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=False,
    )
    return loader, sampler, workers


def _tensorboard(cfg: TrainConfig, run: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logs are optional
        return None
    return SummaryWriter(str(run / "tensorboard"))
