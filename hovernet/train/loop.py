"""The training loop: `train(cfg)` runs (or resumes) one run in `cfg.out`.

Run folder:

    config.yaml     the resolved configuration
    last.pth        the latest state: model (the project's checkpoint format, so `hovernet infer`
                    reads it as it is) + optimiser, scaler, epoch, step and RNG state for --resume
    best.pth        the model of the epoch with the best validation PQ (or loss without PQ)
    metrics.jsonl   one line per epoch: epoch, train_loss, each term, lr, the validation figures
                    (valid_never_predicted: the classes of the targets the model never predicted)
    plots/*.png     loss terms, validation Dice, accuracy, PQ, learning rate
    tensorboard/    TensorBoard logs

With `ema_decay` > 0 the run also keeps an exponential moving average of the weights and BatchNorm
statistics (`torch.optim.swa_utils.AveragedModel`), updated after every step. The average is what
is validated and what best.pth and last.pth hold as their model (so `hovernet infer` uses it);
last.pth keeps the trained weights themselves under `train_desc` for --resume.

Exact resume: an epoch's sample order and every sample's augmentation are drawn from (seed,
epoch) alone (`EpochSampler`), the learning rate is a function of the epoch, and the checkpoint
holds model, optimiser, scaler, the step inside the epoch, the epoch's running sums and the
torch RNG state. So stopping anywhere and resuming gives the same weights as running straight.

Several processes (torchrun, or `--gpu 0,1` via `launch`): DistributedDataParallel, each
process takes its share of every global batch; logs and checkpoints on rank 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hovernet.device import autocast_dtype, resolve_device
from hovernet.errors import HoverNetError
from hovernet.io.atomic import write_text_atomic
from hovernet.model.registry import build_model, get_architecture
from hovernet.progress import Progress
from hovernet.resources import spare_cpus
from hovernet.train.config import CONFIG_NAME, TrainConfig, config_yaml
from hovernet.train.data import (
    EpochSampler,
    SeededConcat,
    TrainingData,
    balanced_weights,
    load_training_data,
)
from hovernet.train.losses import hovernet_losses
from hovernet.train.state import (
    Dist,
    TrainParts,
    TrainState,
    append_line,
    dist_from_env,
    load_run_checkpoint,
    make_ema,
    prepare_run_folder,
    save_run_checkpoint,
    truncate_metrics,
)
from hovernet.train.validate import validate_run

ENCODER_PREFIXES = ("d0.", "d1.", "d2.", "d3.")  # frozen in the first phase (the original's)


class TrainingDiverged(HoverNetError):
    """A loss term became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    state: TrainState
    stopped: str  # "done", "time", "steps"
    last_metrics: dict = field(default_factory=dict)
    step_losses: list[float] = field(default_factory=list)  # total loss of each step of this call


@dataclass
class _Budget:
    """When this call stops before the run is done: --time-limit, stop_after_steps."""

    started: float
    limit_s: float | None
    stop_after_steps: int | None
    steps: int = 0  # steps taken by this call
    step_losses: list[float] = field(default_factory=list)


def pick_device(cfg: TrainConfig, dist: Dist) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    if device.type == "cuda":
        if device.index is None:  # "cuda" alone: the current device, with its index
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of a (0-based) epoch: drops once per phase, at `lr_drop_epoch`."""
    in_phase = epoch % cfg.epochs
    return cfg.lr * (cfg.lr_drop_factor if in_phase >= cfg.lr_drop_epoch else 1.0)


def n_phases(cfg: TrainConfig) -> int:
    freeze = cfg.freeze_encoder if cfg.freeze_encoder is not None else cfg.pretrained is not None
    return 2 if freeze else 1


def set_encoder_frozen(model: torch.nn.Module, frozen: bool) -> None:
    prefixes = getattr(model, "encoder_prefixes", ENCODER_PREFIXES)
    names = [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))]
    if frozen and not names:
        raise HoverNetError(
            f"architecture {model.mode!r} has no encoder layers to freeze: train without "
            "--freeze-encoder"
        )
    for name, param in model.named_parameters():
        param.requires_grad_(not (frozen and name.startswith(tuple(prefixes))))


def _make_optimizer(cfg: TrainConfig, net: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _wrap(net: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    if dist.world == 1:
        return net
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=True)


def _log(cfg: TrainConfig, dist: Dist, line: str) -> None:
    if dist.main and not cfg.quiet:
        print(line, flush=True)


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


def _setup(cfg: TrainConfig, dist: Dist) -> tuple[TrainParts, TrainingData, Path, TrainState]:
    """Process group, device, run folder, data, model, optimiser; the resumed state."""
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, rank=dist.rank, world_size=dist.world)
    device = pick_device(cfg, dist)
    amp_dtype = autocast_dtype(device, cfg.precision)
    init_path = _init_path(cfg)  # before the run folder exists: a bad path leaves nothing
    if cfg.pretrained is not None and not cfg.resume:
        from hovernet.model.pretrained import check_weights_file

        check_weights_file(cfg.pretrained)
    run = prepare_run_folder(cfg) if dist.main else cfg.out
    if dist.world > 1:
        torch.distributed.barrier()

    torch.manual_seed(cfg.seed)
    geometry = get_architecture(cfg.arch).geometry
    data = load_training_data(cfg.data, geometry, cfg.seed, cfg.augment, cfg.stain_jitter)
    net = build_model(cfg.arch, data.nr_types)
    if cfg.pretrained is not None and not cfg.resume:
        from hovernet.model.pretrained import load_encoder_weights

        _log(cfg, dist, f"encoder: {load_encoder_weights(net, cfg.pretrained).summary()}")
    if init_path is not None:
        from hovernet.model.checkpoints import init_from_checkpoint

        _log(cfg, dist, f"starting from {init_from_checkpoint(net, init_path, cfg.mpp)}")
    if cfg.sync_bn and dist.world > 1:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    channels_last = cfg.channels_last and device.type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    parts = TrainParts(
        cfg=cfg,
        dist=dist,
        device=device,
        net=net,
        optimizer=_make_optimizer(cfg, net),
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        ema=make_ema(net, cfg.ema_decay),
        class_weights=_class_weights(cfg, data.nr_types),
        type_info=data.type_info,
    )
    state = TrainState()
    if cfg.resume:
        state = load_run_checkpoint(run / "last.pth", parts)
        if dist.main:
            truncate_metrics(run / "metrics.jsonl", state.epoch)
    if dist.main:
        write_text_atomic(run / CONFIG_NAME, config_yaml(cfg))
    return parts, data, run, state


def _class_weights(cfg: TrainConfig, nr_types: int | None) -> torch.Tensor | None:
    if not cfg.class_weights:
        return None
    if nr_types is None or len(cfg.class_weights) != nr_types:
        raise HoverNetError(
            f"class_weights has {len(cfg.class_weights)} values but the model has "
            f"{nr_types or 0} types (background included): give one per type id"
        )
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


def train(cfg: TrainConfig, dist: Dist | None = None) -> TrainResult:
    """Train (or resume with `cfg.resume`) the run in `cfg.out`; see the module docstring."""
    dist = dist or dist_from_env()
    parts, data, run, state = _setup(cfg, dist)
    device = parts.device
    train_set = SeededConcat(data.train)
    weights = balanced_weights(data.train) if cfg.balance_classes else None
    sampler = EpochSampler(
        len(train_set), cfg.batch, cfg.seed, dist.rank, dist.world, cfg.steps_per_epoch, weights
    )
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
    phases = n_phases(cfg)
    total_epochs = cfg.epochs * phases
    writer = _tensorboard(cfg, run) if dist.main else None
    limit_s = None if cfg.time_limit is None else cfg.time_limit * 60.0
    budget = _Budget(time.monotonic(), limit_s, cfg.stop_after_steps)
    seconds_before = state.train_seconds
    stopped = "done"
    record: dict = {}
    amp = parts.amp_dtype
    _log(
        cfg,
        dist,
        f"training {cfg.arch} (nr_types={data.nr_types}) on {len(train_set)} patches from "
        f"{len(cfg.data)} folder(s), {sampler.steps} steps/epoch x {total_epochs} epochs, "
        f"batch {cfg.batch} x {dist.world} process(es), {device}, "
        f"{'fp32' if amp is None else str(amp).split('.')[-1]}, {workers} workers",
    )

    try:
        frozen_now = None
        model = parts.net
        while state.epoch < total_epochs and stopped == "done":
            epoch = state.epoch
            frozen = phases == 2 and epoch < cfg.epochs
            if phases == 2 and epoch == cfg.epochs and state.step_in_epoch == 0:
                parts.optimizer = _make_optimizer(cfg, parts.net)  # phase 2 starts afresh
            if frozen != frozen_now:
                set_encoder_frozen(parts.net, frozen)
                model = _wrap(parts.net, dist, device)
                frozen_now = frozen
            lr = lr_at(cfg, epoch)
            for group in parts.optimizer.param_groups:
                group["lr"] = lr
            parts.net.train()
            sampler.set_epoch(epoch, state.step_in_epoch)
            stopped = _run_steps(parts, model, loader, sampler.steps, state, budget, writer)
            state.train_seconds = seconds_before + time.monotonic() - budget.started
            if stopped != "done" and state.step_in_epoch < sampler.steps:
                if dist.main:
                    save_run_checkpoint(run / "last.pth", parts, state)
                why = "time limit reached" if stopped == "time" else "step limit reached"
                _log(cfg, dist, f"{why} at step {state.global_step}: saved last.pth (--resume)")
                break
            record = _end_epoch(state, lr, epoch)
            if dist.main and cfg.valid_every and (epoch + 1) % cfg.valid_every == 0:
                record.update(validate_run(parts, data, workers, epoch + 1))
            state.epoch += 1
            state.step_in_epoch = 0
            state.sums = {}
            if dist.main:
                _finish_epoch(parts, run, state, record, writer)
                _log(cfg, dist, _summary(record))
            if dist.world > 1:
                torch.distributed.barrier()
    finally:  # workers, the pin-memory thread and the writer must not outlive the run
        _shutdown_loader(loader)
        if writer is not None:
            writer.close()
    if dist.world > 1:
        torch.distributed.barrier()
    return TrainResult(run, state, stopped, record, budget.step_losses)


def _run_steps(parts, model, loader, n_steps: int, state: TrainState, budget: _Budget, writer):
    """One epoch's steps (from `state.step_in_epoch` on): "done", or "time" / "steps" when
    this call's budget ran out first."""
    cfg, dist = parts.cfg, parts.dist
    desc = f"epoch {state.epoch + 1}/{cfg.epochs * n_phases(cfg)}"
    with Progress(n_steps, desc, "steps", cfg.quiet or not dist.main) as bar:
        if state.step_in_epoch:
            bar.advance(state.step_in_epoch)
        for batch in loader:
            values = train_step(parts, model, batch, state)
            if parts.ema is not None:
                parts.ema.update_parameters(parts.net)
            for k, v in values.items():
                state.sums[k] = state.sums.get(k, 0.0) + v
            state.step_in_epoch += 1
            state.global_step += 1
            budget.step_losses.append(values["loss"])
            bar.advance(1, loss=values["loss"])
            if writer is not None:
                writer.add_scalar("train/loss_step", values["loss"], state.global_step)
            budget.steps += 1
            if budget.limit_s is not None and _time_up(
                budget.started, budget.limit_s, dist, parts.device
            ):
                return "time"
            if budget.stop_after_steps and budget.steps >= budget.stop_after_steps:
                return "steps"
    return "done"


def _shutdown_loader(loader: torch.utils.data.DataLoader) -> None:
    """Stop a DataLoader's persistent workers (and pin-memory thread) now.

    A run that stops in the middle of an epoch (time limit, error) leaves the iterator with
    prefetched batches; without this, the process could wait on those workers at exit.
    """
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def _time_up(started: float, limit_s: float, dist: Dist, device: torch.device) -> bool:
    spent = time.monotonic() - started >= limit_s
    if dist.world == 1:
        return spent
    # rank 0's clock decides, so that every process stops after the same step
    up = torch.tensor([float(spent)], device=device)
    torch.distributed.broadcast(up, 0)
    return bool(up.item())


def train_step(parts: TrainParts, model, batch: dict, state: TrainState) -> dict[str, float]:
    """One optimiser step of `model` (the network, or its DDP wrapper) on a batch."""
    cfg, device, amp_dtype = parts.cfg, parts.device, parts.amp_dtype
    img = batch["img"].to(device, non_blocking=True).float()
    if parts.channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    target = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "img"}
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=bool(amp_dtype)):
        out = model(img)
    total, terms = hovernet_losses(out, target, cfg.weights, cfg.msge_variant, parts.class_weights)
    names = ["loss", *terms]
    values = torch.stack([total.detach(), *(t.detach() for t in terms.values())]).float()
    if parts.dist.world > 1:
        torch.distributed.all_reduce(values)
        values /= parts.dist.world
    values = values.cpu()
    if not bool(torch.isfinite(values).all()):
        bad = [n for n, v in zip(names, values.tolist(), strict=True) if not math.isfinite(v)]
        term = next((n for n in bad if n != "loss"), bad[0])
        raise TrainingDiverged(
            f"loss term {term} is {values[names.index(term)].item()} at step "
            f"{state.global_step + 1} (epoch {state.epoch + 1}): training stopped, "
            f"{cfg.out}/last.pth keeps the last good state; lower --lr or check the data"
        )
    optimizer, scaler = parts.optimizer, parts.scaler
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
    return dict(zip(names, values.tolist(), strict=True))


def _end_epoch(state: TrainState, lr: float, epoch: int) -> dict:
    n = max(state.step_in_epoch, 1)
    means = {k: v / n for k, v in state.sums.items()}
    record = {"epoch": epoch + 1, "train_loss": means.pop("loss", float("nan"))}
    record.update(means)
    record.update(lr=lr, steps=state.global_step, time_s=round(state.train_seconds, 2))
    return record


def _finish_epoch(parts: TrainParts, run: Path, state: TrainState, record: dict, writer) -> None:
    from hovernet.train.plots import write_plots

    score = record.get("valid_pq", -record.get("valid_loss", math.inf))
    if "valid_pq" in record or "valid_loss" in record:
        if score > state.best_score:
            state.best_score, state.best_epoch = float(score), state.epoch
            save_run_checkpoint(run / "best.pth", parts, state)
    record["best_epoch"] = state.best_epoch
    append_line(run / "metrics.jsonl", record)
    save_run_checkpoint(run / "last.pth", parts, state)
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch":
                writer.add_scalar(f"epoch/{k}", v, state.epoch)
        writer.flush()
    write_plots(run / "metrics.jsonl", run / "plots")


def _summary(record: dict) -> str:
    keys = ("train_loss", "valid_loss", "valid_np_dice", "valid_pq", "valid_aji", "lr")
    parts = [f"{k}={record[k]:.4g}" for k in keys if k in record]
    return f"epoch {record.get('epoch')}: " + " ".join(parts)


def _tensorboard(cfg: TrainConfig, run: Path):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: logs are optional
        return None
    return SummaryWriter(str(run / "tensorboard"))
